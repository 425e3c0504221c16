//! Typed view of a `component.json`, for the rest of the SDK.
//!
//! Deserialization is tolerant: everything but `title` may be absent and unknown keys are kept
//! in each struct's `extra` map, so any descriptor the schema accepts also parses here. Use
//! [`validate_str`](super::validate_str) for diagnostics; this type only reports serde errors.

use std::str::FromStr;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A parsed `component.json`.
///
/// ```
/// use deckhand_component::{ComponentDescriptor, FunctionKind};
/// let descriptor: ComponentDescriptor = r#"{
///     "title": "Petstore",
///     "triggers": {"getPets": {"title": "Get pets", "main": "./lib/triggers/getPets.js", "type": "polling"}},
///     "actions": {"createPet": {"title": "Create", "main": "./lib/actions/createPet.js"}}
/// }"#
/// .parse()?;
/// let (kind, function) = descriptor.function("createPet").expect("declared");
/// assert_eq!(kind, FunctionKind::Action);
/// assert_eq!(function.main.as_deref(), Some("./lib/actions/createPet.js"));
/// assert_eq!(descriptor.function_names().collect::<Vec<_>>(), ["getPets", "createPet"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentDescriptor {
    /// UI name of the component.
    pub title: String,
    /// UI description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Component version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Declared environment variables, in document order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env_vars: IndexMap<String, EnvVarDescriptor>,
    /// The credential step; `None` when the component has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsDescriptor>,
    /// Platform auth-client types (`oauth2`, `basic`, `api_key`, `noauth`, `oauth2_instagram`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_client_types: Vec<String>,
    /// Triggers by name, in document order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub triggers: IndexMap<String, FunctionDescriptor>,
    /// Actions by name, in document order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub actions: IndexMap<String, FunctionDescriptor>,
    /// Every other top-level key (`docsUrl`, `buildType`, `help`, ...), in document order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Whether a function is a trigger or an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    /// Declared under `triggers`.
    Trigger,
    /// Declared under `actions`.
    Action,
}

/// One trigger or action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDescriptor {
    /// UI title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// UI description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Node: module path relative to the component root; Java: class name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main: Option<String>,
    /// Trigger type (`polling`, `webhook`, `pushing`); `None` for actions and when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub trigger_type: Option<String>,
    /// Configuration fields, in document order.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, FieldDescriptor>,
    /// Static metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataDescriptor>,
    /// Dynamic metadata provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_metadata: Option<DynamicMetadata>,
    /// As written; see [`FunctionDescriptor::resolves_object_references`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resolve_object_references: Option<bool>,
    /// Every other key (`deprecated`, `order`, `help`, `note`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl FunctionDescriptor {
    /// Whether lightweight message bodies are downloaded before the function runs; the
    /// Sailors default to `true`.
    pub fn resolves_object_references(&self) -> bool {
        self.auto_resolve_object_references.unwrap_or(true)
    }
}

/// `metadata: {in, out}` of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataDescriptor {
    /// Schema of the step's input; absent means no mapper before the step.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub input: Option<MetadataSource>,
    /// Schema of the step's output.
    #[serde(default, rename = "out", skip_serializing_if = "Option::is_none")]
    pub output: Option<MetadataSource>,
    /// Any other key.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A metadata schema given inline or as a file path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetadataSource {
    /// The schema itself.
    Inline(Map<String, Value>),
    /// Path of a JSON file holding the schema, relative to the component root.
    Path(String),
}

/// `dynamicMetadata` of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DynamicMetadata {
    /// Node: whether the module exports `getMetaModel`.
    Enabled(bool),
    /// Java: class name of the `DynamicMetadataProvider`.
    Provider(String),
}

/// One UI field of the credentials or of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldDescriptor {
    /// UI label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// View class, e.g. `TextFieldView`, `SelectView`, `OAuthFieldView`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_class: Option<String>,
    /// Whether the UI demands a value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Options of a select field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<FieldModel>,
    /// Names of other fields of the same step this field depends on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// Every other key (`prompt`, `placeholder`, `note`, `order`, `help`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The options of a select field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldModel {
    /// Fixed options, value → label.
    Static(IndexMap<String, Value>),
    /// Name of the function (Node) or provider class (Java) that returns the options.
    Function(String),
}

/// The `credentials` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsDescriptor {
    /// Credential fields; each becomes a key of the stored credential and of `cfg`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, FieldDescriptor>,
    /// Java: class name of the `CredentialsVerifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// OAuth2 application; strings may hold `{{name}}` placeholders (see
    /// [`render_template`](super::render_template)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Descriptor>,
    /// Every other key (`oauth1`, `useOAuthClient`, `help`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `credentials.oauth2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OAuth2Descriptor {
    /// Client id (often `{{OAUTH_CLIENT_ID}}`).
    #[serde(default)]
    pub client_id: String,
    /// Client secret (often `{{OAUTH_CLIENT_SECRET}}`).
    #[serde(default)]
    pub client_secret: String,
    /// Authorization endpoint.
    #[serde(default)]
    pub auth_uri: String,
    /// Token endpoint, also used for refresh.
    #[serde(default)]
    pub token_uri: String,
    /// Requested scopes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `basic` when the client authenticates with HTTP Basic on the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
    /// Provider extras such as `access_type` and `prompt`.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `envVars`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvVarDescriptor {
    /// Whether the platform demands a value.
    #[serde(default)]
    pub required: bool,
    /// What the variable is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Any other key.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ComponentDescriptor {
    /// Looks a function up the way sailor-nodejs does: triggers first, then actions.
    pub fn function(&self, name: &str) -> Option<(FunctionKind, &FunctionDescriptor)> {
        self.triggers
            .get(name)
            .map(|f| (FunctionKind::Trigger, f))
            .or_else(|| self.actions.get(name).map(|f| (FunctionKind::Action, f)))
    }

    /// Names of all triggers, then all actions, in document order.
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.triggers
            .keys()
            .chain(self.actions.keys())
            .map(String::as_str)
    }

    /// The names of the credential fields, in document order; each is a key of the stored
    /// credential.
    pub fn credential_fields(&self) -> Vec<String> {
        self.credentials
            .as_ref()
            .map(|c| c.fields.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The credential field holding the OAuth2 token set: the first with `viewClass`
    /// `OAuthFieldView` or `HTTPAuthView`.
    pub fn oauth_field(&self) -> Option<&str> {
        self.credentials
            .as_ref()?
            .fields
            .iter()
            .find_map(|(name, field)| {
                matches!(
                    field.view_class.as_deref(),
                    Some("OAuthFieldView" | "HTTPAuthView")
                )
                .then_some(name.as_str())
            })
    }

    /// Parses a descriptor from JSON text (a leading UTF-8 byte-order mark is ignored).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text.strip_prefix('\u{feff}').unwrap_or(text))
    }
}

impl FromStr for ComponentDescriptor {
    type Err = serde_json::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_json(s)
    }
}
