//! The typed [`ComponentDescriptor`] over the realistic fixtures.

use std::path::Path;

use deckhand::component::{
    ComponentDescriptor, DynamicMetadata, FieldModel, FunctionKind, MetadataSource, render_template,
};

fn load(name: &str) -> ComponentDescriptor {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/components")
        .join(name)
        .join("component.json");
    let text = std::fs::read_to_string(&path).expect("fixture readable");
    ComponentDescriptor::from_json(&text).expect("fixture parses")
}

#[test]
fn salesforce_legacy() {
    let d = load("salesforce-legacy");
    assert_eq!(d.title, "Salesforce (legacy)");
    assert_eq!(d.version.as_deref(), Some("1.3.9"));
    assert_eq!(
        d.env_vars.keys().collect::<Vec<_>>(),
        [
            "OAUTH_CLIENT_ID",
            "OAUTH_CLIENT_SECRET",
            "SALESFORCE_API_VERSION"
        ]
    );
    assert!(d.env_vars["OAUTH_CLIENT_ID"].required);
    // Unknown top-level keys survive, in order.
    assert_eq!(
        d.extra.keys().collect::<Vec<_>>(),
        ["docsUrl", "deprecated", "useOAuthClient"]
    );
    assert_eq!(
        d.function_names().collect::<Vec<_>>(),
        ["entry", "create", "query", "lookup"]
    );

    let credentials = d.credentials.as_ref().expect("credentials");
    assert_eq!(
        credentials.fields.keys().collect::<Vec<_>>(),
        ["prodEnv", "oauth"]
    );
    let prod_env = &credentials.fields["prodEnv"];
    assert_eq!(prod_env.view_class.as_deref(), Some("SelectView"));
    match &prod_env.model {
        Some(FieldModel::Static(options)) => {
            assert_eq!(options.keys().collect::<Vec<_>>(), ["test", "login"]);
        }
        other => panic!("unexpected model {other:?}"),
    }
    let oauth2 = credentials.oauth2.as_ref().expect("oauth2");
    let token_uri = render_template(&oauth2.token_uri, |name| {
        (name == "prodEnv").then(|| "login".to_owned())
    })
    .expect("renders");
    assert_eq!(
        token_uri,
        "https://login.salesforce.com/services/oauth2/token"
    );

    let (kind, entry) = d.function("entry").expect("entry");
    assert_eq!(kind, FunctionKind::Trigger);
    assert_eq!(entry.trigger_type.as_deref(), Some("polling"));
    assert_eq!(entry.dynamic_metadata, Some(DynamicMetadata::Enabled(true)));
    assert_eq!(
        entry.fields["object"].model,
        Some(FieldModel::Function("objectTypes".into()))
    );
    assert!(entry.resolves_object_references());

    let (kind, query) = d.function("query").expect("query");
    assert_eq!(kind, FunctionKind::Action);
    let metadata = query.metadata.as_ref().expect("metadata");
    assert_eq!(
        metadata.input,
        Some(MetadataSource::Path("./lib/schemas/query.in.json".into()))
    );

    let (_, lookup) = d.function("lookup").expect("lookup");
    assert!(!lookup.resolves_object_references());
    assert_eq!(lookup.fields["lookupField"].require, ["sobject"]);
    match &lookup.metadata.as_ref().and_then(|m| m.input.clone()) {
        Some(MetadataSource::Inline(schema)) => assert_eq!(schema["type"], "object"),
        other => panic!("unexpected metadata {other:?}"),
    }
    assert!(d.function("missing").is_none());
}

#[test]
fn outlook_and_java() {
    let outlook = load("outlook");
    assert_eq!(outlook.auth_client_types, ["oauth2"]);
    let credentials = outlook.credentials.as_ref().expect("credentials");
    assert!(credentials.oauth2.is_none());
    assert!(!credentials.fields["oauth"].required);
    let (_, contacts) = outlook.function("getContacts").expect("trigger");
    let metadata = contacts.metadata.as_ref().expect("metadata");
    assert_eq!(
        metadata.input,
        Some(MetadataSource::Inline(Default::default()))
    );

    let java = load("java");
    let credentials = java.credentials.as_ref().expect("credentials");
    assert_eq!(
        credentials.verifier.as_deref(),
        Some("io.elastic.salesforce.CredentialsVerifierImpl")
    );
    let oauth2 = credentials.oauth2.as_ref().expect("oauth2");
    assert_eq!(oauth2.scopes, ["api", "refresh_token"]);
    assert_eq!(oauth2.client_auth.as_deref(), Some("basic"));
    assert_eq!(oauth2.extra["prompt"], "consent");
    let (_, events) = java.function("accountEvents").expect("trigger");
    assert_eq!(events.trigger_type.as_deref(), Some("pushing"));
    assert_eq!(
        events.dynamic_metadata,
        Some(DynamicMetadata::Provider(
            "io.elastic.salesforce.providers.EventMetadataProvider".into()
        ))
    );
}

#[test]
fn name_in_both_sections_resolves_to_the_trigger_like_node() {
    let d: ComponentDescriptor = r#"{"title": "T",
        "triggers": {"x": {"main": "t.js"}},
        "actions": {"x": {"main": "a.js"}}}"#
        .parse()
        .expect("parses");
    let (kind, function) = d.function("x").expect("found");
    assert_eq!(kind, FunctionKind::Trigger);
    assert_eq!(function.main.as_deref(), Some("t.js"));
}

#[test]
fn round_trips_through_serde() {
    let d = load("salesforce-legacy");
    let json = serde_json::to_string(&d).expect("serializes");
    let again = ComponentDescriptor::from_json(&json).expect("parses again");
    assert_eq!(d, again);
}

#[test]
fn only_title_is_required() {
    assert!(ComponentDescriptor::from_json(r#"{"title": "T"}"#).is_ok());
    assert!(ComponentDescriptor::from_json(r#"{"description": "T"}"#).is_err());
    assert!(ComponentDescriptor::from_json("\u{feff}{\"title\": \"T\"}").is_ok());
}
