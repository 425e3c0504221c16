// One message type for connectors and the wire: the decrypted elastic.io envelope.
pub use crate::runtime::protocol::Message;
