//! Configuration files: every file in `conf/` validates against real generated
//! material, and broken configurations are refused with file, line and field.

use std::path::{Path, PathBuf};

use consent_cache::Bin;
use sandbox::pki::{DevPki, PkiSpec};
use sandbox::tokens::{DevAlg, DevIssuer};

fn bin(s: &str) -> Bin {
    Bin::parse(s).unwrap()
}

/// Lays out the files the example configuration names, next to a copy of it.
fn workspace_for(config_text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    DevPki::generate(
        &dir.path().join("pki"),
        &PkiSpec::new(
            vec![bin("100140000001"), bin("100140000002")],
            vec![bin("990340000011")],
        ),
    )
    .unwrap();
    let issuer = DevIssuer::generate(DevAlg::Es256, "k1", "https://trust.hub.local.test").unwrap();
    std::fs::write(dir.path().join("pki/jwks.json"), issuer.jwks_json()).unwrap();
    std::fs::write(dir.path().join("consents.jsonl"), "").unwrap();
    let cfg = dir.path().join("hub.toml");
    std::fs::write(&cfg, config_text).unwrap();
    (dir, cfg)
}

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

#[test]
fn every_toml_in_conf_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(conf_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // `trust*.toml` configure the trust sidecar (`trust check`, scripts/check-conf);
        // `tariff*.toml` are billing tariffs (`hub-billing check-tariff`, billing's tests).
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("trust") || name.starts_with("tariff") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (_dir, cfg) = workspace_for(&text);
        let summary = gateway::server::check(&cfg)
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()));
        assert!(summary.contains("participants"), "{summary}");
        seen += 1;
    }
    assert!(seen >= 1, "no configuration files found in conf/");
}

fn example() -> String {
    std::fs::read_to_string(conf_dir().join("hub.example.toml")).unwrap()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn refused(text: &str) -> String {
    let (_dir, cfg) = workspace_for(text);
    match gateway::server::check(&cfg) {
        Ok(s) => panic!("accepted a broken configuration: {s}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_key_names_file_line_and_field() {
    let text = example().replace("http2 = true", "http2 = true\nhttp3 = true");
    let err = refused(&text);
    let line = line_of(&text, "http3 = true");
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(err.contains("http3"), "{err}");
}

#[test]
fn bad_bin_names_its_line_and_field() {
    let text = example().replace(
        "bin = \"990340000011\"\nname",
        "bin = \"99034000001X\"\nname",
    );
    let err = refused(&text);
    let line = line_of(&text, "99034000001X");
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(err.contains("participants[2].bin"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let text = example().replace(
        "pki/ca.pem\"]         # platform",
        "pki/nope.pem\"]         # platform",
    );
    let err = refused(&text);
    assert!(err.contains("tls.client_ca[0]"), "{err}");
    assert!(err.contains("nope.pem"), "{err}");
}

#[test]
fn wrong_type_and_missing_section_are_refused() {
    let err = refused(&example().replace("leeway_secs = 30", "leeway_secs = \"thirty\""));
    assert!(err.contains("leeway_secs"), "{err}");
    let text = example();
    let start = text.find("[tokens]").unwrap();
    let end = text.find("[consents]").unwrap();
    let err = refused(&format!("{}{}", &text[..start], &text[end..]));
    assert!(err.contains("tokens"), "{err}");
}

#[test]
fn provider_without_provider_role_and_http_upstream_are_refused() {
    let err = refused(&example().replace("https://127.0.0.1:9443\"", "http://127.0.0.1:9443\""));
    assert!(
        err.contains("providers[0].upstreams[0]") && err.contains("https"),
        "{err}"
    );
    let err = refused(&example().replace("roles = [\"provider\"]", "roles = [\"user\"]"));
    assert!(err.contains("provider"), "{err}");
}

#[test]
fn broken_consent_snapshot_names_its_line() {
    let (dir, cfg) = workspace_for(&example());
    std::fs::write(
        dir.path().join("consents.jsonl"),
        "{\"snapshot_version\": 1}\n{\"id\": \"c1\", \"bogus\": 1}\n",
    )
    .unwrap();
    let err = gateway::server::check(&cfg).unwrap_err().to_string();
    assert!(err.contains("consents.jsonl"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("bogus"), "{err}");
}

const TRUST_SECTION: &str =
    "[trust]\nurl = \"https://127.0.0.1:7444\"\nca = [\"pki/ca.pem\"]\nmax_staleness_secs = 5\n";

fn without_consents_file(text: &str) -> String {
    text.replace(
        "[consents]\nsnapshot = \"consents.jsonl\"",
        "[consents]\n# from the sidecar",
    )
}

#[test]
fn trust_sidecar_as_the_control_plane_validates() {
    let text = format!("{}\n{TRUST_SECTION}", without_consents_file(&example()));
    let (_dir, cfg) = workspace_for(&text);
    let summary = gateway::server::check(&cfg).unwrap_or_else(|e| panic!("refused: {e}"));
    assert!(summary.contains("participants"), "{summary}");
    // `[consents]` may be left out entirely.
    let text = text.replace("[consents]\n# from the sidecar", "");
    let (_dir, cfg) = workspace_for(&text);
    gateway::server::check(&cfg).unwrap_or_else(|e| panic!("refused: {e}"));
}

#[test]
fn with_the_sidecar_providers_may_be_known_to_its_registry_only() {
    // The provider's `[[participants]]` entry gone: refused with a file control plane …
    let text = example().replace("roles = [\"provider\"]", "roles = [\"user\"]");
    assert!(refused(&text).contains("provider"));
    // … accepted with `[trust]`, whose registry may know it (until it does, the provider
    // is not routed: `provider_not_found`).
    let text = format!("{}\n{TRUST_SECTION}", without_consents_file(&text));
    let (_dir, cfg) = workspace_for(&text);
    gateway::server::check(&cfg).unwrap_or_else(|e| panic!("refused: {e}"));
    // A provider listed twice is still refused.
    let twice = format!("{text}\n{}", provider_block(&text));
    let err = refused(&twice);
    assert!(err.contains("listed twice"), "{err}");
}

/// The first `[[providers]]` block of a configuration.
fn provider_block(text: &str) -> String {
    let start = text.find("\n[[providers]]\n").expect("a provider") + 1;
    let rest = &text[start..];
    let end = rest[1..].find("\n[").map_or(rest.len(), |i| i + 1);
    rest[..end].to_string()
}

#[test]
fn exactly_one_consent_control_plane() {
    let both = format!("{}\n{TRUST_SECTION}", example());
    let err = refused(&both);
    let line = line_of(&both, "url = \"https://127.0.0.1:7444\"");
    assert!(err.contains(&format!("hub.toml:{line}: trust:")), "{err}");
    assert!(err.contains("exactly one"), "{err}");

    // Neither: at the `[consents]` table, where `snapshot` belongs.
    let text = without_consents_file(&example());
    let err = refused(&text);
    let line = line_of(&text, "[consents]");
    assert!(
        err.contains(&format!("hub.toml:{line}: consents.snapshot:")),
        "{err}"
    );
    assert!(err.contains("[trust]"), "{err}");
    // Nothing of it written: the file without a line (never `:0:`).
    let err = refused(&text.replace("[consents]\n# from the sidecar", ""));
    assert!(err.contains("hub.toml: consents.snapshot:"), "{err}");
}

#[test]
fn broken_trust_section_names_its_field() {
    let base = without_consents_file(&example());
    let text = format!(
        "{base}\n{}",
        TRUST_SECTION.replace("https://127.0.0.1:7444", "http://127.0.0.1:7444")
    );
    let err = refused(&text);
    let line = line_of(&text, "url = \"http://127.0.0.1:7444\"");
    assert!(
        err.contains(&format!("hub.toml:{line}: trust.url:")),
        "{err}"
    );
    assert!(err.contains("https"), "{err}");

    let err = refused(&format!(
        "{base}\n{}",
        TRUST_SECTION.replace("pki/ca.pem", "pki/nope.pem")
    ));
    assert!(
        err.contains("trust.ca[0]") && err.contains("nope.pem"),
        "{err}"
    );

    let err = refused(&format!(
        "{base}\n{}",
        TRUST_SECTION.replace("max_staleness_secs = 5", "max_staleness_secs = 0")
    ));
    assert!(err.contains("trust.max_staleness_secs"), "{err}");

    let err = refused(&format!(
        "{base}\n{TRUST_SECTION}jwks = true\njwks_refresh_secs = 0\n"
    ));
    assert!(err.contains("trust.jwks_refresh_secs"), "{err}");

    let err = refused(&format!("{base}\n{TRUST_SECTION}stale = 1\n"));
    assert!(err.contains("stale"), "{err}");
}

#[test]
fn broken_limits_are_refused_at_their_line() {
    // A shared class without a store.
    let text = example().replace(
        "[limits.monthly]\n",
        "[limits.classes]\nuser = { mode = \"shared\" }\n\n[limits.monthly]\n",
    );
    let err = refused(&text);
    let line = text.lines().position(|l| l == "[limits.classes]").unwrap() + 1;
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(err.contains("limits.classes.user"), "{err}");
    assert!(err.contains("[limits.store]"), "{err}");

    // A time zone that does not exist.
    let text = example().replace("\"Asia/Almaty\"", "\"Asia/Nowhere\"");
    let err = refused(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("time_zone = "))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(err.contains("limits.monthly.time_zone"), "{err}");

    // Open data cannot be given a monthly quota: it is never counted.
    let err = refused(&example().replace(
        "transactions = 240 }",
        "transactions = 240, open-data = 5 }",
    ));
    assert!(err.contains("open-data"), "{err}");

    // A leased class whose burst cannot cover the lease's lag, and a leased month.
    let text = example().replace(
        "[limits.monthly]\n",
        "[limits.store]\nurl = \"redis://127.0.0.1:6379\"\nlease_ms = 1000\n\n\
         [limits.classes]\nuser = { mode = \"leased\" }\n\n[limits.monthly]\n",
    );
    // The override's 500/s for 1 s of lag is more than its burst of 400.
    let text = text.replace(
        "per_user = { per_second = 500, burst = 1000 }",
        "per_user = { per_second = 500, burst = 400 }",
    );
    let err = refused(&text);
    let line = text.lines().position(|l| l == "[limits.classes]").unwrap() + 1;
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(
        err.contains("limits.classes.user") && err.contains("lease_ms"),
        "{err}"
    );
    let err = refused(&example().replace(
        "[limits.monthly]\n",
        "[limits.store]\nurl = \"redis://127.0.0.1:6379\"\n\n\
         [limits.classes]\nmonthly = { mode = \"leased\" }\n\n[limits.monthly]\n",
    ));
    assert!(
        err.contains("limits.classes.monthly") && err.contains("leased"),
        "{err}"
    );

    // Credentials belong in password_file, never in the URL.
    let err = refused(&example().replace(
        "[limits.monthly]\n",
        "[limits.store]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n\n[limits.monthly]\n",
    ));
    assert!(err.contains("limits.store.url"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password must not be echoed: {err}"
    );
}

#[test]
fn a_store_that_is_not_running_is_accepted_without_waiting_for_it() {
    // The gateway starts (and a configuration checks) while Redis is down: the store is
    // connected in the background and the failure policies cover the time it is away.
    let text = example().replace(
        "[limits.monthly]\n",
        "[limits.store]\nurl = \"redis://127.0.0.1:1\"\nconnect_timeout_ms = 60000\n\n\
         [limits.classes]\nmonthly = { on_failure = \"deny\" }\n\n[limits.monthly]\n",
    );
    let (_dir, cfg) = workspace_for(&text);
    // With a 60 s connect timeout, a check that waited for the store would hang here.
    gateway::server::check(&cfg).expect("accepted");
}

#[test]
fn an_upgrade_socket_path_longer_than_a_unix_socket_holds_is_refused() {
    // Pingora would panic binding it in the new process of an upgrade: refused at load.
    let long = format!("/var/lib/{}/upgrade.sock", "g".repeat(100));
    let text = example().replace(
        "max_connections = 10000",
        &format!("max_connections = 10000\nupgrade_sock = \"{long}\""),
    );
    let err = refused(&text);
    let line = line_of(&text, "upgrade_sock = \"/var");
    assert!(err.contains(&format!("hub.toml:{line}:")), "{err}");
    assert!(
        err.contains("server.upgrade_sock") && err.contains("at most 107"),
        "{err}"
    );
    // At the limit it is accepted.
    let fits = format!("/{}", "s".repeat(106));
    let text = example().replace(
        "max_connections = 10000",
        &format!("max_connections = 10000\nupgrade_sock = \"{fits}\""),
    );
    let (_dir, cfg) = workspace_for(&text);
    gateway::server::check(&cfg).expect("a 107-byte socket path is accepted");
}

#[test]
fn a_journal_too_deep_for_the_default_upgrade_socket_only_makes_upgrades_unavailable() {
    // The default socket is `<journal>.upgrade.sock`; a deep journal directory is no
    // reason to refuse serving: the check accepts it and warns, naming the field.
    let deep = format!("/var/lib/{}/audit.jsonl", "j".repeat(100));
    let text = example().replace("path = \"audit.jsonl\"", &format!("path = \"{deep}\""));
    let (_dir, cfg) = workspace_for(&text);
    let checked = gateway::server::check_report(&cfg).expect("accepted");
    let warned = checked
        .warnings
        .iter()
        .any(|w| w.contains("server.upgrade_sock") && w.contains("at most 107"));
    assert!(warned, "{:?}", checked.warnings);
    // A journal in a short directory has its socket and no warning.
    let (_dir, cfg) = workspace_for(&example());
    let checked = gateway::server::check_report(&cfg).expect("accepted");
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
}

/// The error for `text`, which must name `hub.toml:LINE: FIELD:` with LINE the line of
/// `at` in `text`.
fn refused_at(text: &str, at: &str, field: &str) -> String {
    let err = refused(text);
    let line = line_of(text, at);
    assert!(
        err.contains(&format!("hub.toml:{line}: {field}:")),
        "want hub.toml:{line}: {field}: in\n{err}"
    );
    err
}

#[test]
fn a_parse_error_in_an_entry_names_the_entry() {
    // A negative timeout: the provider's full path, its BIN and the allowed range.
    let text = example().replace("timeout_ms = 5000 ", "timeout_ms = -5 ");
    let err = refused_at(&text, "timeout_ms = -5", "providers[0].timeout_ms");
    assert!(err.contains("bin = \"990340000011\""), "{err}");
    assert!(err.contains("1 to 600000 milliseconds"), "{err}");
    // A wrong type in the second of two entries.
    let text = example().replace("name = \"Steppe Pay JSC\"", "name = 7");
    let err = refused_at(&text, "name = 7", "participants[1].name");
    assert!(err.contains("bin = \"100140000002\""), "{err}");
}

#[test]
fn durations_rates_and_sizes_are_bounded_at_their_line() {
    let cases = [
        (
            "timeout_ms = 5000 ",
            "timeout_ms = 99999999999 ",
            "providers[0].timeout_ms",
            "600000",
        ),
        (
            "connect_timeout_ms = 1000",
            "connect_timeout_ms = 0",
            "providers[0].connect_timeout_ms",
            "60000",
        ),
        (
            "eject_after_failures = 3 ",
            "eject_after_failures = 0 ",
            "providers[0].eject_after_failures",
            "1000",
        ),
        (
            "eject_secs = 10",
            "eject_secs = 86400",
            "providers[0].eject_secs",
            "3600",
        ),
        (
            "max_body_bytes = 65536 ",
            "max_body_bytes = 0 ",
            "server.max_body_bytes",
            "16777216",
        ),
        (
            "grace_period_secs = 1 ",
            "grace_period_secs = 100000 ",
            "server.grace_period_secs",
            "600",
        ),
        (
            "shutdown_timeout_secs = 10 ",
            "shutdown_timeout_secs = 100000 ",
            "server.shutdown_timeout_secs",
            "600",
        ),
        (
            "upstream_keepalive_pool_size = 1024",
            "upstream_keepalive_pool_size = 10000000",
            "server.upstream_keepalive_pool_size",
            "65536",
        ),
        (
            "tls_handshake_timeout_secs = 10 ",
            "tls_handshake_timeout_secs = 0 ",
            "server.tls_handshake_timeout_secs",
            "300",
        ),
        (
            "max_connections = 10000 ",
            "max_connections = 0 ",
            "server.max_connections",
            "1000000",
        ),
        (
            "max_header_bytes = 16384 ",
            "max_header_bytes = 100 ",
            "server.max_header_bytes",
            "1048576",
        ),
        ("# threads = 2 ", "threads = 0 ", "server.threads", "1024"),
        (
            "max_token_bytes = 8192",
            "max_token_bytes = 10",
            "tokens.max_token_bytes",
            "65536",
        ),
        (
            "cache_capacity = 100000 ",
            "cache_capacity = 100000000 ",
            "tokens.cache_capacity",
            "10000000",
        ),
        ("buffer = 65536 ", "buffer = 0 ", "audit.buffer", "16777216"),
    ];
    for (from, to, field, max) in cases {
        let text = example().replace(from, to);
        assert_ne!(text, example(), "{from:?} is not in the example");
        let err = refused_at(&text, to.trim(), field);
        assert!(err.contains(&format!("to {max} ")), "{field}: {err}");
    }
    let text = example().replace("# max_staleness_secs = 300 ", "max_staleness_secs = 0 ");
    refused_at(
        &text,
        "max_staleness_secs = 0",
        "consents.max_staleness_secs",
    );
}

#[test]
fn an_override_for_an_unknown_participant_is_refused_without_the_registry() {
    let text = example().replace(
        "participant = \"100140000002\"",
        "participant = \"100140000099\"",
    );
    let err = refused_at(
        &text,
        "participant = \"100140000099\"",
        "limits.overrides[0].participant",
    );
    assert!(
        err.contains("100140000099") && err.contains("[[participants]]"),
        "{err}"
    );
    // The same for a provider's monthly tier.
    let text = example().replace("provider = \"990340000011\"", "provider = \"990340000099\"");
    refused_at(
        &text,
        "provider = \"990340000099\"",
        "limits.monthly.providers[0].provider",
    );
    // With `[trust]` the registry may list it later: accepted.
    let text = example().replace(
        "participant = \"100140000002\"",
        "participant = \"100140000099\"",
    );
    let text = format!("{}\n{TRUST_SECTION}", without_consents_file(&text));
    let (_dir, cfg) = workspace_for(&text);
    gateway::server::check(&cfg).unwrap_or_else(|e| panic!("refused: {e}"));
}

#[test]
fn with_the_sidecar_check_warns_what_the_registry_replaces() {
    let text = format!("{}\n{TRUST_SECTION}", without_consents_file(&example()));
    let (_dir, cfg) = workspace_for(&text);
    let checked = gateway::server::check_report(&cfg).unwrap_or_else(|e| panic!("refused: {e}"));
    let line = line_of(&text, "upstreams = [\"https://127.0.0.1:9443\"");
    let upstreams = format!("hub.toml:{line}: providers[0].upstreams:");
    assert!(
        checked
            .warnings
            .iter()
            .any(|w| w.contains(&upstreams) && w.contains("990340000011")),
        "{:?}",
        checked.warnings
    );
    let line = text
        .lines()
        .position(|l| l == "[[participants]]")
        .expect("an entry")
        + 1;
    let entry = format!("hub.toml:{line}: participants[0]:");
    assert!(
        checked.warnings.iter().any(|w| w.contains(&entry)),
        "{:?}",
        checked.warnings
    );
    // Without the sidecar nothing is replaced: no warning.
    let (_dir, cfg) = workspace_for(&example());
    let checked = gateway::server::check_report(&cfg).expect("valid");
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
}
