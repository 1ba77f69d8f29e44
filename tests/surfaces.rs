//! Each thing is defined once, and every surface has it: these tests fail when the README, a
//! command line or the protocol lacks what another defines. (The `gitcap` CLI's flags are
//! checked by client/tests/cli.rs, the browser page's field numbers by tests/browser.rs.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::Args;
use gitcap_protocol::{descriptor, GenerationOptions};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The backticked names in the first column of the README table whose header starts `header`.
fn table_names(readme: &str, header: &str) -> BTreeSet<String> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(header)).skip(2);
    let mut names = BTreeSet::new();
    for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        names.extend(first_cell.split('`').skip(1).step_by(2).map(str::to_string));
    }
    assert!(!names.is_empty(), "no README table headed {header:?}");
    names
}

fn methods(service: &str) -> BTreeSet<String> {
    descriptor::service_methods(service).unwrap().into_iter().collect()
}

#[test]
fn the_readme_lists_every_rpc() {
    let readme = readme();
    assert_eq!(table_names(&readme, "| RPC |"), methods("Captioner"), "README's Captioner table vs the proto");
    assert_eq!(table_names(&readme, "| call |"), methods("Admin"), "README's Admin table vs the proto");
}

/// The options' names as the protocol has them; `early_stopping_mode` is the typed
/// `early_stopping` (the boolean field of that name is deprecated).
fn protocol_options() -> BTreeSet<String> {
    let fields = descriptor::message_fields("GenerationOptions").unwrap();
    fields
        .into_iter()
        .filter(|f| !f.deprecated)
        .map(|f| if f.name == "early_stopping_mode" { "early_stopping".to_string() } else { f.name })
        .collect()
}

fn flag(option: &str) -> String {
    format!("--{}", option.replace('_', "-"))
}

/// Every request that generates carries a priority, except live captions (always interactive);
/// every surface offers it.
#[test]
fn every_generating_request_has_a_priority() {
    let generating: Vec<String> = descriptor::message_names()
        .into_iter()
        .filter(|m| descriptor::message_fields(m).unwrap().iter().any(|f| f.type_name == "GenerationOptions"))
        .collect();
    assert!(generating.len() >= 5, "{generating:?}");
    for message in generating.iter().filter(|m| *m != "LiveStart") {
        let fields = descriptor::message_fields(message).unwrap();
        let priority = fields.iter().find(|f| f.name == "priority");
        assert_eq!(priority.map(|f| f.type_name.as_str()), Some("Priority"), "{message} has no `Priority priority`");
    }
    let values: Vec<String> = descriptor::enum_values("Priority").unwrap().into_iter().map(|(name, _)| name).collect();
    for priority in [gitcap_protocol::Priority::Interactive, gitcap_protocol::Priority::Batch] {
        let wire = format!("PRIORITY_{}", priority.as_str().to_uppercase());
        assert!(values.contains(&wire), "{wire} is not in the proto's Priority: {values:?}");
    }
    let readme = readme();
    for documented in ["--priority", "service_tier", "PRIORITY_BATCH", "interactive_rows", "batch_max_wait_ms"] {
        assert!(readme.contains(documented), "README does not document {documented}");
    }
}

#[test]
fn every_generation_option_is_on_every_server_surface() {
    let protocol = protocol_options();
    assert!(protocol.len() >= 12, "{protocol:?}");
    let typed: BTreeSet<String> = GenerationOptions::augment_args(clap::Command::new("options"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    assert_eq!(typed, protocol, "gitcap_protocol::GenerationOptions vs proto GenerationOptions");

    let help = Command::new(env!("CARGO_BIN_EXE_gitcap-server")).args(["caption", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = readme();
    for option in &protocol {
        assert!(help.contains(&flag(option)), "`gitcap-server caption` has no {}:\n{help}", flag(option));
        assert!(readme.contains(&flag(option)), "README does not document {}", flag(option));
    }
}

/// The Open Inference Protocol door takes every option as a request parameter (read through
/// the options' one definition), plus `priority`, and docs/oip.md documents each.
#[test]
fn every_generation_option_is_an_open_inference_protocol_parameter() {
    let mut expected = protocol_options();
    expected.insert("priority".to_string());
    let parameters: BTreeSet<String> = gitcap_server::oip::contract::parameter_names().iter().cloned().collect();
    assert_eq!(parameters, expected, "the OIP door's parameters vs proto GenerationOptions + priority");
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/oip.md")).unwrap();
    for parameter in &parameters {
        assert!(doc.contains(&format!("`{parameter}`")), "docs/oip.md does not document the parameter `{parameter}`");
    }
}

/// docs/hostile-input.md names the test that holds each bound: each must exist.
#[test]
fn every_bound_in_the_hostile_input_doc_names_a_real_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/hostile-input.md")).unwrap();
    let mut sources = String::new();
    let mut dirs = vec![root.join("tests"), root.join("server/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let named: BTreeSet<&str> = doc
        .split("::")
        .skip(1)
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(named.len() >= 20, "the doc names {} tests", named.len());
    let missing: Vec<&str> = named.into_iter().filter(|name| !sources.contains(&format!("fn {name}("))).collect();
    assert!(missing.is_empty(), "docs/hostile-input.md names tests that do not exist: {missing:?}");
}
