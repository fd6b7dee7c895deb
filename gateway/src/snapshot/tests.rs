//! Tests of the section compile functions (each refuses what it must, naming the file's
//! line and the field) and of the publisher (what it reuses by key, what it refuses, what
//! an event changes), over generated development material and real files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use feed_wire::{ParticipantRecord, ParticipantStatus as WireStatus, Role as WireRole};
use policy::directory::{ParticipantStatus, Role};
use policy::limits::{LimitOverride, QuotaSettings};

use crate::config::{
    at, ConfigError, ConsentSection, FileConfig, ParticipantSection, ProviderSection, TrustSection,
};
use crate::network::Registry;
use crate::plane::FeedStatus;
use crate::testkit;

use super::sections::{self, FileInputs};
use super::{Change, ConsentFile, PublishError, Published, Publisher};

/// A directory with the test world's material and its configuration, typed.
struct World {
    dir: tempfile::TempDir,
    config: FileConfig,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (path, _, _) = testkit::write_material(dir.path());
    let text = std::fs::read_to_string(path).expect("configuration");
    let config = toml::from_str(&text).expect("the generated configuration parses");
    World { dir, config }
}

impl World {
    /// Writes `c` as `name` in the world's directory.
    fn write(&self, name: &str, c: &FileConfig) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, c.to_toml().expect("serialises")).expect("write");
        path
    }

    /// Loads the configuration after `edit`.
    fn load(&self, edit: impl FnOnce(&mut FileConfig)) -> Result<FileInputs, ConfigError> {
        let mut c = self.config.clone();
        edit(&mut c);
        let path = self.write("case.toml", &c);
        sections::load(&path, None, &Arc::new(FeedStatus::new()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The field an error names, and whether it points at a line of the file.
fn refused(r: Result<FileInputs, ConfigError>) -> (String, bool, String) {
    match r {
        Err(ConfigError::Invalid {
            field,
            line,
            message,
            ..
        }) => (field, line > 0, message),
        Err(e) => panic!("not a field error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn the_generated_configuration_compiles_and_round_trips() {
    let w = world();
    let inputs = w.load(|_| {}).expect("compiles");
    assert_eq!(inputs.base.participants.len(), 2);
    assert_eq!(inputs.base.providers[0].targets.len(), 2);
    assert!(inputs.trust().is_none());
    // Typed → TOML → typed gives the same file again.
    let text = w.config.to_toml().expect("serialises");
    let again: FileConfig = toml::from_str(&text).expect("parses");
    assert_eq!(again.to_toml().expect("serialises"), text);
}

#[test]
fn server_section() {
    let w = world();
    let (f, _, _) = refused(w.load(|c| c.server.threads = Some(0)));
    assert_eq!(f, "server.threads");
    let (f, _, _) = refused(w.load(|c| c.server.max_header_bytes = 100));
    assert_eq!(f, "server.max_header_bytes");
    let (f, at_line, m) = refused(w.load(|c| c.server.listen = at("nowhere".into())));
    assert_eq!(f, "server.listen");
    assert!(at_line && m.contains("ip:port"), "{m}");
}

#[test]
fn tls_sections() {
    let w = world();
    let (f, _, m) = refused(w.load(|c| c.tls.client_ca.clear()));
    assert_eq!(f, "tls.client_ca");
    assert!(m.contains("platform CA"), "{m}");
    let (f, at_line, m) = refused(w.load(|c| c.tls.cert = at(PathBuf::from("/nonexistent.pem"))));
    assert!(
        f == "tls.cert" && at_line && m.contains("cannot read"),
        "{f} {m}"
    );
    let jwks = w.config.tokens.jwks.get_ref().clone();
    let (f, at_line, _) = refused(w.load(|c| c.tls.client_ca = vec![at(jwks)]));
    assert!(f == "tls.client_ca[0]" && at_line, "{f}");
    let (f, _, _) = refused(w.load(|c| c.upstream_tls.ca.clear()));
    assert_eq!(f, "upstream_tls.ca");
    let consents = w.path("consents.jsonl");
    let (f, _, _) = refused(w.load(|c| c.upstream_tls.client_cert = at(consents)));
    assert_eq!(f, "upstream_tls.client_cert");
}

#[test]
fn tokens_section() {
    let w = world();
    let (f, at_line, _) = refused(w.load(|c| c.tokens.issuer = at(String::new())));
    assert!(f == "tokens.issuer" && at_line);
    let (f, _, _) = refused(w.load(|c| c.tokens.audience = at(String::new())));
    assert_eq!(f, "tokens.audience");
    let consents = w.path("consents.jsonl");
    let (f, at_line, _) = refused(w.load(|c| c.tokens.jwks = at(consents)));
    assert!(f == "tokens.jwks" && at_line);
    // A leeway past five minutes would extend every token's life.
    let (f, at_line, m) = refused(w.load(|c| c.tokens.leeway_secs = at(301)));
    assert!(
        f == "tokens.leeway_secs" && at_line && m.contains("300"),
        "{f} {m}"
    );
    let inputs = w.load(|c| c.tokens.leeway_secs = at(300)).expect("300 s");
    assert_eq!(inputs.token_settings.leeway_secs, 300);
    // The budgets of failed verifications: at least one, bounded.
    for n in [0, 100_001] {
        let (f, at_line, _) = refused(w.load(|c| {
            c.tokens.max_failed_verifications_per_connection_per_sec = at(n);
        }));
        assert!(f == "tokens.max_failed_verifications_per_connection_per_sec" && at_line);
        let (f, at_line, _) = refused(w.load(|c| {
            c.tokens.max_failed_verifications_per_certificate_per_sec = at(n);
        }));
        assert!(f == "tokens.max_failed_verifications_per_certificate_per_sec" && at_line);
    }
}

#[test]
fn participants_section() {
    let w = world();
    let dup = w.config.participants[0].clone();
    let (f, at_line, m) = refused(w.load(|c| c.participants.push(dup)));
    assert!(
        f == "participants[2].bin" && at_line && m.contains("duplicate"),
        "{f} {m}"
    );
    let (f, _, _) = refused(w.load(|c| c.participants[0].roles.clear()));
    assert_eq!(f, "participants[0].roles");
    let (f, at_line, _) =
        refused(w.load(|c| c.participants[0].thumbprints = vec![at("abc".into())]));
    assert!(f == "participants[0].thumbprints[0]" && at_line);
    // The same certificate registered to a second participant.
    let mut other = ParticipantSection::new(
        "100140000002",
        "Other",
        &[Role::User],
        ParticipantStatus::Active,
    );
    other.thumbprints = w.config.participants[0].thumbprints.clone();
    let (f, _, _) = refused(w.load(|c| c.participants.push(other)));
    assert_eq!(f, "participants[2]");
    let (f, _, _) = refused(w.load(|c| c.participants[0].bin = at("12".into())));
    assert_eq!(f, "participants[0].bin");
}

#[test]
fn providers_section() {
    let w = world();
    let stranger = ProviderSection::new("990340000022", &["https://127.0.0.1:9".into()]);
    let (f, _, m) = refused(w.load(|c| c.providers.push(stranger.clone())));
    assert!(
        f == "providers[1].bin" && m.contains("provider` role"),
        "{f} {m}"
    );
    let twice = w.config.providers[0].clone();
    let (f, _, m) = refused(w.load(|c| c.providers.push(twice)));
    assert!(f == "providers[1].bin" && m.contains("twice"), "{m}");
    let (f, _, _) = refused(w.load(|c| c.providers[0].timeout_ms = 0));
    assert_eq!(f, "providers[0].timeout_ms");
    let (f, _, _) = refused(w.load(|c| c.providers[0].upstreams.clear()));
    assert_eq!(f, "providers[0].upstreams");
    let (f, at_line, _) =
        refused(w.load(|c| c.providers[0].upstreams[0] = at("http://127.0.0.1:9".into())));
    assert!(f == "providers[0].upstreams[0]" && at_line);
    // With `[trust]` the registry may be the one that knows a provider.
    let ca = vec![w.config.tls.client_ca[0].get_ref().clone()];
    w.load(|c| {
        c.providers.push(stranger);
        c.consents = Default::default();
        c.trust = Some(TrustSection::new("https://127.0.0.1:1", &ca));
    })
    .expect("accepted with [trust]");
}

#[test]
fn limits_and_control_plane_sections() {
    let w = world();
    let o = LimitOverride {
        participant: consent_cache::Bin::parse(testkit::USER).expect("bin"),
        per_user: QuotaSettings::new(1, 1),
        per_user_provider: None,
    };
    let (f, _, _) = refused(w.load(|c| c.limits.overrides = vec![o.clone(), o]));
    assert_eq!(f, "limits.overrides");
    let ca = vec![w.config.tls.client_ca[0].get_ref().clone()];
    let trust = TrustSection::new("https://127.0.0.1:1", &ca);
    let (f, _, _) = refused(w.load(|c| c.trust = Some(trust.clone())));
    assert_eq!(f, "trust", "both control planes");
    let (f, _, _) = refused(w.load(|c| c.consents = Default::default()));
    assert_eq!(f, "consents.snapshot", "neither");
    let (f, at_line, _) = refused(w.load(|c| c.consents.max_staleness_secs = 0));
    assert!(f == "consents.max_staleness_secs" && at_line, "{f}");
    let (f, _, _) = refused(w.load(|c| {
        c.consents = Default::default();
        c.trust = Some(TrustSection {
            ca: Vec::new(),
            ..trust.clone()
        });
    }));
    assert_eq!(f, "trust.ca");
    let (f, _, _) = refused(w.load(|c| {
        c.consents = Default::default();
        c.trust = Some(TrustSection {
            max_staleness_secs: 0,
            ..trust.clone()
        });
    }));
    assert_eq!(f, "trust.max_staleness_secs");
    let (f, _, _) = refused(w.load(|c| {
        c.consents = Default::default();
        c.trust = Some(TrustSection {
            url: at("http://127.0.0.1:1".into()),
            ..trust
        });
    }));
    assert_eq!(f, "trust.url");
}

/// A publisher over the world's configuration as written to `hub.toml`.
fn publisher(w: &World, edit: impl FnOnce(&mut FileConfig)) -> (Publisher, PathBuf) {
    let mut c = w.config.clone();
    edit(&mut c);
    let path = w.write("hub.toml", &c);
    let feed = Arc::new(FeedStatus::new());
    let file = sections::load(&path, None, &feed).expect("compiles");
    (Publisher::new(file, feed), path)
}

async fn reload(p: &Publisher, path: &Path, edit: impl FnOnce(&mut FileConfig)) {
    let mut c: FileConfig =
        toml::from_str(&std::fs::read_to_string(path).expect("read")).expect("parses");
    edit(&mut c);
    std::fs::write(path, c.to_toml().expect("serialises")).expect("write");
    let previous = p.file_inputs().await;
    let file = sections::load(path, Some(&previous), p.feed()).expect("compiles");
    let published = p.publish(Change::File(Box::new(file))).await;
    assert_eq!(published.expect("published"), Published::Replaced);
}

#[tokio::test]
async fn a_reload_reuses_what_did_not_change_and_rebuilds_what_did() {
    let w = world();
    let (p, path) = publisher(&w, |_| {});
    let first = p.current();
    assert!(first.tokens().verify("not.a.token", 0).is_err());
    assert_eq!(first.tokens().cache_misses(), 1);
    reload(&p, &path, |_| {}).await;
    let same = p.current();
    assert!(!Arc::ptr_eq(&first, &same), "a new snapshot is published");
    assert!(std::ptr::eq(first.limits(), same.limits()), "limiter kept");
    assert!(
        Arc::ptr_eq(&first.tokens(), &same.tokens()),
        "verifier (and cache) kept"
    );
    assert!(
        Arc::ptr_eq(&first.consents(), &same.consents()),
        "consent file unchanged: store kept"
    );
    assert!(
        Arc::ptr_eq(&first.network().upstreams[0], &same.network().upstreams[0]),
        "pool kept"
    );

    reload(&p, &path, |c| {
        c.limits.per_user = QuotaSettings::new(5, 5).expect("quota");
        c.tokens.leeway_secs = at(5);
        c.providers[0].timeout_ms = 1234;
    })
    .await;
    let changed = p.current();
    assert!(
        !std::ptr::eq(same.limits(), changed.limits()),
        "new limits, new limiter"
    );
    assert!(
        !Arc::ptr_eq(&same.tokens(), &changed.tokens()),
        "new settings, new verifier"
    );
    assert!(!Arc::ptr_eq(
        &same.network().upstreams[0],
        &changed.network().upstreams[0]
    ));
    assert_eq!(changed.network().upstreams[0].timeout.as_millis(), 1234);
    assert_eq!(
        changed.tokens().cache_misses(),
        1,
        "token-cache counters outlive verifiers"
    );
}

/// Appends a copy of the world's consent renamed `id` to `file`.
fn add_consent(file: &Path, id: &str) {
    let mut text = std::fs::read_to_string(file).expect("consents");
    let first = text.lines().next().expect("a consent").to_string();
    text.push_str(&first.replace(testkit::CONSENT, id));
    text.push('\n');
    std::fs::write(file, text).expect("write");
}

#[tokio::test]
async fn a_changed_consent_file_is_loaded_and_installed_as_its_own_input() {
    let w = world();
    let (p, path) = publisher(&w, |_| {});
    assert_eq!(p.current().consents().len(), 1);
    let file = w.path("consents.jsonl");
    add_consent(&file, "consent-2");
    assert!(p.consent_file().changed_on_disk().is_some());
    // A reload of the other sections does not read the consent file again.
    reload(&p, &path, |_| {}).await;
    assert_eq!(p.current().consents().len(), 1);
    let snapshot = p.current();
    // It is loaded and published on its own, while a compile holds the other inputs (as
    // one resolving a bank's host name would).
    let compiling = p.hold_inputs().await;
    let loaded = ConsentFile::load(&file).expect("loads");
    let published =
        tokio::time::timeout(Duration::from_secs(5), p.publish(Change::Consents(loaded)))
            .await
            .expect("a consent file waited for a compile");
    assert_eq!(published.expect("published"), Published::Replaced);
    drop(compiling);
    assert_eq!(p.current().consents().len(), 2);
    assert!(p.consent_file().changed_on_disk().is_none());
    assert!(
        Arc::ptr_eq(&snapshot, &p.current()),
        "nothing else was recompiled"
    );
    let again = ConsentFile::load(&file).expect("loads");
    assert_eq!(
        p.publish(Change::Consents(again)).await.expect("ok"),
        Published::Unchanged
    );
    // A file that is not the configured one is refused.
    let other = w.path("other.jsonl");
    std::fs::copy(&file, &other).expect("copy");
    add_consent(&other, "consent-3");
    let r = p
        .publish(Change::Consents(ConsentFile::load(&other).expect("loads")))
        .await;
    assert!(matches!(r, Err(PublishError::ConsentsNotWanted)), "{r:?}");
    assert_eq!(p.current().consents().len(), 2);
    // A reload that names another file installs it with the configuration.
    reload(&p, &path, |c| {
        c.consents = ConsentSection::file(other.clone())
    })
    .await;
    assert_eq!(p.current().consents().len(), 3);
    assert_eq!(
        p.consent_file().in_force().map(|s| s.path().to_path_buf()),
        Some(other)
    );
}

#[tokio::test]
async fn a_consent_file_is_refused_in_trust_mode() {
    let w = world();
    let (p, _) = trust_mode(&w);
    let loaded = ConsentFile::load(&w.path("consents.jsonl")).expect("loads");
    let r = p.publish(Change::Consents(loaded)).await;
    assert!(matches!(r, Err(PublishError::ConsentsNotWanted)), "{r:?}");
    assert!(p.current().consents().is_empty());
}

#[tokio::test]
async fn keys_are_an_input_of_trust_mode_only() {
    let w = world();
    let (p, _) = publisher(&w, |_| {});
    let jwks = std::fs::read(w.config.tokens.jwks.get_ref()).expect("jwks");
    let r = p.publish(Change::Jwks(jwks)).await;
    assert!(matches!(r, Err(PublishError::JwksNotWanted)), "{r:?}");
}

fn trust_mode(w: &World) -> (Publisher, PathBuf) {
    let ca = vec![w.config.tls.client_ca[0].get_ref().clone()];
    publisher(w, |c| {
        c.consents = Default::default();
        let mut t = TrustSection::new("https://127.0.0.1:1", &ca);
        t.jwks = true;
        c.trust = Some(t);
        c.participants.clear();
        c.providers.clear();
    })
}

#[tokio::test]
async fn fetched_keys_replace_the_verifier_only_when_usable_and_new() {
    let w = world();
    let (p, _) = trust_mode(&w);
    let first = p.current().tokens();
    for bad in [b"not json".to_vec(), br#"{"keys":[]}"#.to_vec()] {
        let r = p.publish(Change::Jwks(bad)).await;
        assert!(matches!(r, Err(PublishError::Jwks(_))), "{r:?}");
        assert!(
            Arc::ptr_eq(&first, &p.current().tokens()),
            "last good keys kept"
        );
    }
    let issuer =
        sandbox::tokens::DevIssuer::generate(sandbox::tokens::DevAlg::Es256, "rotated", "i")
            .expect("issuer");
    let (_, jwks) = issuer.write_files(&w.path("rotated")).expect("files");
    let jwks = std::fs::read(jwks).expect("jwks");
    let r = p
        .publish(Change::Jwks(jwks.clone()))
        .await
        .expect("published");
    assert_eq!(r, Published::Replaced);
    let second = p.current().tokens();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(
        p.publish(Change::Jwks(jwks)).await.expect("ok"),
        Published::Unchanged
    );
    assert!(Arc::ptr_eq(&second, &p.current().tokens()));
}

#[tokio::test]
async fn a_registry_change_republishes_the_directory_and_keeps_the_rest() {
    let w = world();
    let (p, _) = trust_mode(&w);
    let before = p.current();
    assert!(before.network().directory.participants().is_empty());
    // Before the sidecar's first snapshot the summary does not pass the file's count
    // (none here) off as the hub's participants.
    let summary = before.summary();
    assert!(
        summary.starts_with("0 participants and 0 providers from the file (the trust registry's"),
        "{summary}"
    );
    let mut registry = Registry::new();
    registry.upsert(ParticipantRecord {
        bin: consent_cache::Bin::parse(testkit::USER).expect("bin"),
        name: "User".into(),
        roles: vec![WireRole::User],
        status: WireStatus::Active,
        thumbprints: Vec::new(),
        provider_urls: Vec::new(),
        delisted: Vec::new(),
        updated_at: time::OffsetDateTime::UNIX_EPOCH,
    });
    let registry = Arc::new(registry);
    p.publish(Change::Registry(registry.clone()))
        .await
        .expect("published");
    let after = p.current();
    assert_eq!(after.network().directory.participants().len(), 1);
    let summary = after.summary();
    assert!(
        summary.starts_with("1 participants (1 from the trust registry)"),
        "{summary}"
    );
    assert!(Arc::ptr_eq(&before.tokens(), &after.tokens()));
    assert!(std::ptr::eq(before.limits(), after.limits()));
    assert!(p
        .feed()
        .registry()
        .is_some_and(|r| Arc::ptr_eq(&r, &registry)));
}

/// `[rollups]`: refused without `[trust]` at its line; with it, compiled with its
/// defaults, the spool next to the journal; a bad name, a bound, a URL refused by field.
#[test]
fn rollups_need_trust_and_name_their_fields() {
    use crate::config::RollupSection;
    let w = world();
    let (f, at_line, message) = refused(w.load(|c| c.rollups = Some(RollupSection::default())));
    assert_eq!(f, "rollups");
    assert!(at_line, "the error points at [rollups]");
    assert!(message.contains("[trust]"), "{message}");

    let ca = vec![w.config.tls.client_ca[0].get_ref().clone()];
    let with = |r: RollupSection| {
        let ca = ca.clone();
        w.load(move |c| {
            c.consents = Default::default();
            c.trust = Some(TrustSection::new("https://127.0.0.1:1", &ca));
            c.audit.path = "audit.jsonl".into();
            c.rollups = Some(r);
        })
    };
    let named = RollupSection {
        gateway: Some(at("gw-1".into())),
        ..RollupSection::default()
    };
    let inputs = with(named.clone()).expect("accepted with [trust]");
    let r = inputs.process.rollups.expect("on");
    assert_eq!(r.gateway, "gw-1");
    assert_eq!(r.push_interval, Duration::from_secs(10));
    assert_eq!(r.close_after, Duration::from_secs(30));
    assert_eq!(r.max_pending_minutes, 1_440);
    assert!(r.endpoints.is_empty(), "the [trust] endpoints by default");
    assert_eq!(r.spool, Some(w.path("audit.jsonl.rollups")));

    let cases: [(RollupSection, &str); 4] = [
        (
            RollupSection {
                gateway: Some(at("a b".into())),
                ..named.clone()
            },
            "rollups.gateway",
        ),
        (
            RollupSection {
                push_interval_ms: 10,
                ..named.clone()
            },
            "rollups.push_interval_ms",
        ),
        (
            RollupSection {
                max_pending_minutes: 0,
                ..named.clone()
            },
            "rollups.max_pending_minutes",
        ),
        (
            RollupSection {
                url: Some(at("http://127.0.0.1:1".into())),
                ..named.clone()
            },
            "rollups.url",
        ),
    ];
    for (section, field) in cases {
        let (f, at_line, _) = refused(with(section));
        assert_eq!(f, field);
        assert!(at_line, "{field} at its line");
    }
}

/// `[live_checks]`: its defaults when absent; a rate outside 0..=1 (or not a number), a
/// bound or a queue out of range refused by field at its line.
#[test]
fn live_checks_default_to_one_percent_and_name_their_fields() {
    use crate::config::LiveCheckSection;
    let w = world();
    // The test hub samples everything; the section's defaults here.
    let live = w
        .load(|c| c.live_checks = LiveCheckSection::default())
        .expect("compiles")
        .live;
    assert_eq!(live.sample_rate, 0.01);
    assert_eq!((live.max_body_bytes, live.queue), (1 << 20, 64));
    let all = w
        .load(|c| c.live_checks.sample_rate = at(0.0))
        .expect("0 is no answer");
    assert_eq!(all.live.sample_rate, 0.0);
    let cases: [(LiveCheckSection, &str); 6] = [
        (
            LiveCheckSection {
                sample_rate: at(1.5),
                ..Default::default()
            },
            "live_checks.sample_rate",
        ),
        (
            LiveCheckSection {
                sample_rate: at(-0.1),
                ..Default::default()
            },
            "live_checks.sample_rate",
        ),
        (
            LiveCheckSection {
                sample_rate: at(f64::NAN),
                ..Default::default()
            },
            "live_checks.sample_rate",
        ),
        (
            LiveCheckSection {
                max_body_bytes: 10,
                ..Default::default()
            },
            "live_checks.max_body_bytes",
        ),
        (
            LiveCheckSection {
                queue: 0,
                ..Default::default()
            },
            "live_checks.queue",
        ),
        (
            // Each within its range, together over what the validator's queue may hold.
            LiveCheckSection {
                queue: 4096,
                max_body_bytes: 1 << 20,
                ..Default::default()
            },
            "live_checks.queue",
        ),
    ];
    for (section, field) in cases {
        let (f, at_line, message) = refused(w.load(|c| c.live_checks = section));
        assert_eq!(f, field, "{message}");
        assert!(at_line, "{field} at its line");
    }
}
