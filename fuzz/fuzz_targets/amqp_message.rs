//! Incoming AMQP message decoding: headers (an AMQP field table, as the broker delivers it)
//! and body, both protocol versions and both input formats, then everything the worker derives
//! from an input: the outgoing headers and the data, error (with `errorInput`) and rebound
//! publications.
//!
//! Input layout: `[mode][len: u16 LE][field table bytes][body…]`. Mode bit 0: encrypt the body
//! first (so the plaintext JSON is fuzzed, not just the cipher's padding check); bit 1: input
//! format `error`; bit 2: protocol version 2 for outgoing data.
#![no_main]

use std::sync::{Arc, OnceLock};

use deckhand::runtime::config::RuntimeConfig;
use deckhand::runtime::crypto::ProtocolVersion;
use deckhand::runtime::protocol::{
    ErrorInfo, Incoming, Message, Outgoing, OutgoingContext, StepFlags,
};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use libfuzzer_sys::fuzz_target;

fn config(version2: bool, error_format: bool) -> Arc<RuntimeConfig> {
    static CONFIGS: OnceLock<Vec<Arc<RuntimeConfig>>> = OnceLock::new();
    let all = CONFIGS.get_or_init(|| {
        let mut all = Vec::new();
        for v2 in [false, true] {
            for error in [false, true] {
                let mut vars: Vec<(String, String)> = [
                    ("ELASTICIO_FLOW_ID", "flow"),
                    ("ELASTICIO_EXEC_ID", "exec"),
                    ("ELASTICIO_STEP_ID", "step_1"),
                    ("ELASTICIO_CONTAINER_ID", "container"),
                    ("ELASTICIO_WORKSPACE_ID", "workspace"),
                    ("ELASTICIO_USER_ID", "user"),
                    ("ELASTICIO_COMP_ID", "comp"),
                    ("ELASTICIO_FUNCTION", "process"),
                    ("ELASTICIO_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                    ("ELASTICIO_LISTEN_MESSAGES_ON", "in"),
                    ("ELASTICIO_PUBLISH_MESSAGES_TO", "exchange"),
                    ("ELASTICIO_DATA_ROUTING_KEY", "flow.step_1.message"),
                    ("ELASTICIO_ERROR_ROUTING_KEY", "flow.step_1.error"),
                    ("ELASTICIO_REBOUND_ROUTING_KEY", "flow.step_1.rebound"),
                    ("ELASTICIO_SNAPSHOT_ROUTING_KEY", "flow.step_1.snapshot"),
                    ("ELASTICIO_MESSAGE_CRYPTO_IV", "iv=any16_symbols"),
                    ("ELASTICIO_MESSAGE_CRYPTO_PASSWORD", "testCryptoPassword"),
                    ("DECKHAND_STEP_FILE", "step.json"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
                if v2 {
                    vars.push(("ELASTICIO_PROTOCOL_VERSION".into(), "2".into()));
                }
                if error {
                    vars.push(("ELASTICIO_INPUT_FORMAT".into(), "error".into()));
                }
                all.push(Arc::new(RuntimeConfig::from_vars(vars).expect("valid config")));
            }
        }
        all
    });
    all[usize::from(version2) * 2 + usize::from(error_format)].clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (table_bytes, body) = match rest {
        [lo, hi, rest @ ..] => {
            let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
            rest.split_at(len)
        }
        _ => (&[][..], rest),
    };
    let headers = lapin::types::parsing::parse_field_table(table_bytes)
        .map(|(_, table)| table)
        .unwrap_or_else(|_| FieldTable::default());
    let cfg = config(mode & 4 != 0, mode & 2 != 0);
    let probe = Incoming::new(BasicProperties::default().with_headers(headers.clone()), Vec::new());
    let body = if mode & 1 != 0 {
        cfg.cipher.encrypt(body, probe.protocol_version())
    } else {
        body.to_vec()
    };
    let incoming = Incoming::new(BasicProperties::default().with_headers(headers), body);
    let _ = incoming.message_id();
    let _ = incoming.reply_to();
    let input = match incoming.decode(&cfg.cipher, cfg.input_format) {
        Ok(message) => message,
        // The worker goes on with an empty message and publishes an error event.
        Err(e) => {
            let _ = e.to_string();
            Message::new(serde_json::json!({}))
        }
    };
    let ctx = OutgoingContext::new(cfg.clone(), incoming, &input, StepFlags::default());
    let _ = ctx.publications(Outgoing::Data(input));
    let _ = ctx.publications(Outgoing::Error(ErrorInfo::new("fuzz")));
    let _ = ctx.publications(Outgoing::Rebound {
        reason: "fuzz".into(),
    });
    // The ciphertext of any plaintext decrypts back to it.
    let plain = &data[..data.len().min(64)];
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let sealed = cfg.cipher.encrypt(plain, version);
        assert_eq!(cfg.cipher.decrypt(&sealed, version).expect("round trip"), plain);
    }
});
