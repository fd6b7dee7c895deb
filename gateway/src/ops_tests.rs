//! Tests of what operations rely on: `hub_certificate_expiry_timestamp_seconds` equals
//! the `notAfter` of the certificates a configuration names (at start and after a
//! reload), and every metric name the Grafana dashboard (`docs/ops/grafana-hub.json`) and
//! the alert rules (`conf/alerts/`) use is one the hub's `/metrics` renders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::admin::Admin;
use crate::config::{ConsentSection, FileConfig, TrustSection};
use crate::limits::LimitMetrics;
use crate::plane::FeedStatus;
use crate::proxy::Hub;
use crate::snapshot::sections;
use crate::state::State;
use crate::testkit::{self, BANK};
use crate::tls::CertificateRole;
use pingora::proxy::ProxyHttp;

/// `notAfter` of the certificates written below, as Unix seconds (computed apart:
/// `date -u -d 2041-03-04 +%s`).
const SERVER_2041_03_04: i64 = 2_245_968_000;
const EXTRA_CA_2020_05_06: i64 = 1_588_723_200;
const CLIENT_2039_07_08: i64 = 2_193_696_000;
const SERVER_2042_09_10: i64 = 2_293_920_000;
const CLIENT_2043_11_12: i64 = 2_330_899_200;
const TRUST_CA_2033_02_01: i64 = 1_990_828_800;

/// Writes a self-signed certificate (a CA when `ca`) valid until `not_after` (midnight
/// UTC) and its key as `{stem}.pem` and `{stem}-key.pem`; returns the certificate's PEM.
fn self_signed(dir: &Path, stem: &str, not_after: (i32, u8, u8), ca: bool) -> String {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("parameters");
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).expect("write certificate");
    std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).expect("write key");
    cert.pem()
}

/// The test world with the hub's server and client certificates replaced by ones of
/// known expiry, and a second platform CA (expired in 2020) added to the CA bundle the
/// configuration uses for `[tls] client_ca` and `[upstream_tls] ca`.
fn world_with_known_certificates() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (config, _, _) = testkit::write_material(dir.path());
    let pki = dir.path().join("pki");
    self_signed(&pki, "hub-server", (2041, 3, 4), false);
    self_signed(&pki, "hub-client", (2039, 7, 8), false);
    let extra = self_signed(dir.path(), "extra-ca", (2020, 5, 6), true);
    let bundle = pki.join("ca.pem");
    let mut pem = std::fs::read_to_string(&bundle).expect("the platform CA");
    pem.push_str(&extra);
    std::fs::write(&bundle, pem).expect("write bundle");
    (dir, config)
}

/// `certificate` label → value of `hub_certificate_expiry_timestamp_seconds` in `text`.
fn expiry_gauges(text: &str) -> BTreeMap<String, i64> {
    let prefix = "hub_certificate_expiry_timestamp_seconds{certificate=\"";
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|rest| {
            let (label, value) = rest.split_once("\"} ")?;
            Some((label.to_string(), value.trim().parse::<f64>().ok()? as i64))
        })
        .collect()
}

fn scrape(state: &Arc<State>) -> String {
    String::from_utf8(Admin::new(state.clone()).scrape()).expect("UTF-8 exposition")
}

#[tokio::test]
async fn the_certificate_expiry_gauge_is_each_certificates_not_after() {
    let (dir, config) = world_with_known_certificates();
    let state = testkit::test_state(&config);
    let want: BTreeMap<String, i64> = [
        ("server", SERVER_2041_03_04),
        ("client_ca", EXTRA_CA_2020_05_06),
        ("upstream_client", CLIENT_2039_07_08),
        ("upstream_ca", EXTRA_CA_2020_05_06),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        expiry_gauges(&scrape(&state)),
        want,
        "at start (a bundle counts its earliest certificate; no [trust], no trust_ca)"
    );

    // New server and client certificates, then a reload: the server's is in force at
    // once; the banks' connector keeps the client certificate it started with.
    let pki = dir.path().join("pki");
    self_signed(&pki, "hub-server", (2042, 9, 10), false);
    self_signed(&pki, "hub-client", (2043, 11, 12), false);
    state.reload().await.expect("reloads");
    let after = expiry_gauges(&scrape(&state));
    assert_eq!(after.get("server"), Some(&SERVER_2042_09_10));
    assert_eq!(
        after.get("upstream_client"),
        Some(&CLIENT_2039_07_08),
        "[upstream_tls] takes effect at a restart: the gauge keeps the one in force"
    );
    assert_eq!(after.get("client_ca"), Some(&EXTRA_CA_2020_05_06));
    // At the next start it is the new one.
    state.close_journal(std::time::Duration::from_secs(1));
    let restarted = testkit::test_state(&config);
    let restarted = expiry_gauges(&scrape(&restarted));
    assert_eq!(restarted.get("upstream_client"), Some(&CLIENT_2043_11_12));
    let labels: Vec<&str> = CertificateRole::ALL.iter().map(|r| r.label()).collect();
    assert!(
        restarted.keys().all(|k| labels.contains(&k.as_str())),
        "labels are the fixed set: {restarted:?}"
    );
}

#[test]
fn with_the_trust_sidecar_its_ca_bundle_has_an_expiry() {
    let (dir, config) = world_with_known_certificates();
    let trust_ca = dir.path().join("trust-ca");
    std::fs::create_dir_all(&trust_ca).expect("directory");
    self_signed(&trust_ca, "ca", (2033, 2, 1), true);
    let text = std::fs::read_to_string(&config).expect("configuration");
    let mut c: FileConfig = toml::from_str(&text).expect("parses");
    c.consents = ConsentSection::default();
    c.trust = Some(TrustSection::new(
        "https://127.0.0.1:1",
        &[trust_ca.join("ca.pem")],
    ));
    let path = dir.path().join("trust.toml");
    std::fs::write(&path, c.to_toml().expect("serialises")).expect("write");
    let inputs = sections::load(&path, None, &Arc::new(FeedStatus::new())).expect("loads");
    let certs = &inputs.certificates;
    assert_eq!(
        certs.get(CertificateRole::TrustCa),
        Some(TRUST_CA_2033_02_01)
    );
    assert_eq!(certs.get(CertificateRole::Server), Some(SERVER_2041_03_04));
}

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `hub_…` name in `text` (PromQL expressions, descriptions, test series).
fn hub_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("hub_") {
        let start = i + at;
        let word_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut end = start;
        while end < bytes.len() && word_char(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word_char(bytes[start - 1]) {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// The families of an exposition, by name, with their type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Whether `name` is a series of one of `families` (a histogram's `_bucket`, `_sum` and
/// `_count` included).
fn renders(families: &BTreeMap<String, String>, name: &str) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram")
    })
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_the_hub_renders() {
    let t = testkit::test_hub();
    let hub = Hub::new(t.state.clone());
    // A few requests through the proxy's phases: refused ones (no bank runs here).
    let accounts = format!("/v1/providers/{BANK}/accounts");
    for path in ["/v1/nowhere", accounts.as_str()] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: hub.local.test\r\n\r\n");
        let (mut s, client) = testkit::session(raw.as_bytes(), Some(t.cert)).await;
        let mut ctx = hub.new_ctx();
        let answered = hub.request_filter(&mut s, &mut ctx).await.expect("filter");
        assert!(answered, "{path} is refused here");
        hub.logging(&mut s, None, &mut ctx).await;
        drop(client);
    }
    t.state.reload().await.expect("reloads");
    // Families whose series appear only on events this test cannot cause in-process
    // (a bank's answer, a spent budget, a closed connection, a store failure): one
    // series each, at zero.
    let m = &t.state.metrics;
    m.upstream_latency.with_label_values(&[BANK]);
    m.token_budget_refusals.with_label_values(&["connection"]);
    m.consent_file_loads.with_label_values(&["ok"]);
    m.connections_closed.with_label_values(&["over_capacity"]);
    let limits = LimitMetrics::global();
    limits.store.errors.with_label_values(&["timeout"]);
    limits.fallback.with_label_values(&["user", "local"]);

    let rendered = families(&scrape(&t.state));
    let sources = [
        "docs/ops/grafana-hub.json",
        "conf/alerts/hub-alerts.yml",
        "conf/alerts/hub-alerts.test.yml",
    ];
    let mut used = BTreeSet::new();
    for source in sources {
        let text = std::fs::read_to_string(repo().join(source)).expect(source);
        for name in hub_names(&text) {
            assert!(
                renders(&rendered, &name),
                "{source} uses {name}, which the hub does not render; it renders: {:?}",
                rendered.keys().collect::<Vec<_>>()
            );
            used.insert(name);
        }
    }
    // What the dashboard must show (issue 13 item 5 and issue 12's shared limits).
    let dashboard =
        hub_names(&std::fs::read_to_string(repo().join(sources[0])).expect("the dashboard"));
    for family in [
        "hub_requests_total",
        "hub_request_duration_seconds_bucket",
        "hub_upstream_duration_seconds_bucket",
        "hub_consent_feed_staleness_seconds",
        "hub_consent_feed_version",
        "hub_config_reloads_total",
        "hub_upstream_ejected",
        "hub_upstream_connections_total",
        "hub_limit_store_seconds_bucket",
        "hub_limit_store_errors_total",
        "hub_limit_store_circuit_open",
        "hub_limit_failure_policy_total",
        "hub_certificate_expiry_timestamp_seconds",
        "hub_audit_dropped_total",
    ] {
        assert!(dashboard.contains(family), "the dashboard lacks {family}");
    }
    assert!(used.len() >= 20, "{used:?}");
}
