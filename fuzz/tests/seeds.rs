//! The committed seed corpora (`fuzz/corpus/<target>/`): `write_seeds` (ignored; run by
//! `scripts/fuzz seeds`) writes them from the project's own types and fixtures — real
//! tokens from the development issuer's API, contract paths, the example configuration,
//! feed lines as the sidecar encodes them, snapshot files as the store writes them — and
//! `every_seed_runs_clean` replays every file through its harness.

use std::path::{Path, PathBuf};

use consent_cache::{write_snapshot, Bin, ConsentRecord, ConsentStatus};
use feed_wire::{
    FeedLine, Heartbeat, ParticipantChange, ParticipantOp, ParticipantRecord, ParticipantStatus,
    Resync, Role, SnapshotHeader, SnapshotLine, SnapshotTrailer,
};
use hub_fuzz::token::{issuer, AUDIENCE, ISSUER, KID, NOW};
use sandbox::tokens::{AccessClaims, DevAlg, DevIssuer};
use time::OffsetDateTime;

const USER: &str = "100140000001";
const PROVIDER: &str = "990340000011";
const THUMBPRINT: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(body.as_ref());
    v
}

#[test]
#[ignore = "writes the seed corpora: scripts/fuzz seeds"]
fn write_seeds() {
    route_seeds();
    token_seeds();
    feed_seeds();
    snapshot_seeds();
    config_seeds();
    trust_seeds();
}

fn route_seeds() {
    let p = format!("/v1/providers/{PROVIDER}");
    let cases: [(&str, u8, String); 16] = [
        ("accounts", 0, format!("{p}/accounts")),
        ("account", 0, format!("{p}/accounts/KZ12-3456_a.b~c")),
        ("balances", 0, format!("{p}/accounts/KZ1/balances")),
        ("transactions", 0, format!("{p}/accounts/KZ1/transactions?from=2026-01-01&to=2026-02-01T10:00:00Z&limit=50&cursor=abc-1")),
        ("transactions-offset", 0, format!("{p}/accounts/KZ1/transactions?from=2024-01-02T10:00:00.123%2B05:00&to=2024-01-02")),
        ("open-data", 0, format!("/v1/open-data/{PROVIDER}/exchange-rates?date=2026-01-01&q=%41")),
        ("open-data-branches", 0, format!("/v1/open-data/{PROVIDER}/branches")),
        ("dot-dot", 0, format!("{p}/../accounts")),
        ("encoded-slash", 0, format!("{p}/accounts/a%2Fb")),
        ("double-slash", 0, format!("/v1//providers/{PROVIDER}/accounts")),
        ("semicolon", 0, format!("{p}/accounts/KZ1;jsessionid=1")),
        ("trailing-slash", 0, format!("{p}/accounts/")),
        ("head", 1, format!("{p}/accounts")),
        ("post", 2, format!("{p}/accounts/KZ1/balances")),
        ("token-in-query", 0, format!("{p}/accounts?access_token=abc")),
        ("repeated-param", 0, format!("{p}/accounts/KZ1/transactions?limit=1&limit=2")),
    ];
    for (name, method, target) in cases {
        put("route", name, with_mode(method, target));
    }
}

fn claims(consent: &str) -> AccessClaims {
    let tp: [u8; 32] = [7; 32];
    let mut c = AccessClaims::for_consent(
        ISSUER,
        AUDIENCE,
        Bin::parse(USER).unwrap(),
        consent,
        &[
            consent_cache::Permission::Accounts,
            consent_cache::Permission::Balances,
        ],
        &tp,
        NOW - 60,
        3600,
    )
    .unwrap();
    c.jti = "8f14e45f-ceea-467f-a0e6-2b0d5a1c9c1e".into();
    c
}

fn token_seeds() {
    let i = issuer();
    let token = i.mint(&claims("c-1")).unwrap();
    // The seeds must reach past the signature: the fixed key's tokens verify.
    let jwks = policy::token::Jwks::from_json(i.jwks_json().as_bytes()).unwrap();
    let verifier = policy::token::TokenVerifier::new(
        policy::token::TokenSettings::new(ISSUER, AUDIENCE),
        jwks,
    );
    verifier.verify(&token, NOW).unwrap();
    put("token", "bearer", with_mode(0, format!("Bearer {token}")));
    put(
        "token",
        "bearer-lowercase",
        with_mode(0, format!("bearer {token}")),
    );
    put("token", "raw", with_mode(1, &token));
    let mut expired = claims("c-2");
    expired.exp = NOW - 3600;
    put(
        "token",
        "raw-expired",
        with_mode(1, i.mint(&expired).unwrap()),
    );
    let mut nbf = claims("c-3");
    nbf.nbf = Some(NOW - 10);
    put("token", "raw-nbf", with_mode(1, i.mint(&nbf).unwrap()));
    let header = i.header_json();
    let body = serde_json::to_string(&claims("c-1")).unwrap();
    let signed = |name: &str, h: &str, c: &str| {
        let mut v = vec![2u8];
        v.extend_from_slice(h.as_bytes());
        v.push(0xFF);
        v.extend_from_slice(c.as_bytes());
        put("token", name, v);
    };
    signed("signed", &header, &body);
    let aud_array = body.replace(
        &format!("\"aud\":\"{AUDIENCE}\""),
        &format!("\"aud\":[\"x\",\"{AUDIENCE}\"]"),
    );
    signed("signed-aud-array", &header, &aud_array);
    signed(
        "signed-duplicate",
        &header,
        &body.replacen('{', "{\"scope\":\"payments\",", 1),
    );
    let crit =
        format!("{{\"alg\":\"EdDSA\",\"typ\":\"at+jwt\",\"kid\":\"{KID}\",\"crit\":[\"x\"]}}");
    signed("signed-crit", &crit, &body);
    signed(
        "signed-no-typ",
        &format!("{{\"alg\":\"EdDSA\",\"kid\":\"{KID}\"}}"),
        &body,
    );
    put("token", "jwks-ed25519", with_mode(3, i.jwks_json()));
    let es = DevIssuer::generate(DevAlg::Es256, "es", ISSUER).unwrap();
    let ps = DevIssuer::generate(DevAlg::Ps256, "ps", ISSUER).unwrap();
    put(
        "token",
        "jwks-three",
        with_mode(3, sandbox::tokens::jwks_json_for(&[i, &es, &ps])),
    );
    let private = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"x"}]}"#;
    put("token", "jwks-private", with_mode(3, private));
}

fn record(id: &str, status: ConsentStatus, accounts: Option<Vec<String>>) -> ConsentRecord {
    ConsentRecord {
        id: id.into(),
        api_user: Bin::parse(USER).unwrap(),
        customer: "900101300123".into(),
        providers: vec![Bin::parse(PROVIDER).unwrap()],
        permissions: vec![
            consent_cache::Permission::Accounts,
            consent_cache::Permission::Balances,
            consent_cache::Permission::Transactions,
        ],
        accounts,
        purpose: "PFM".into(),
        created_at: OffsetDateTime::from_unix_timestamp(NOW - 86_400).unwrap(),
        expires_at: Some(OffsetDateTime::from_unix_timestamp(NOW + 86_400).unwrap()),
        status,
    }
}

fn records() -> Vec<ConsentRecord> {
    vec![
        record("c-1", ConsentStatus::Authorised, None),
        record(
            "c-2",
            ConsentStatus::Revoked,
            Some(vec!["KZ1".into(), "KZ2".into()]),
        ),
        record("c-3", ConsentStatus::AwaitingAuthorisation, None),
        record("c-4", ConsentStatus::Expired, None),
        record("c-5", ConsentStatus::Rejected, None),
    ]
}

fn participant() -> ParticipantRecord {
    ParticipantRecord {
        bin: Bin::parse(USER).unwrap(),
        name: "Qazaq Fintech LLP".into(),
        roles: vec![Role::User],
        status: ParticipantStatus::Active,
        thumbprints: vec![THUMBPRINT.into()],
        provider_urls: Vec::new(),
        delisted: Vec::new(),
        updated_at: OffsetDateTime::from_unix_timestamp(NOW).unwrap(),
    }
}

fn lines<T: serde::Serialize>(items: &[T]) -> String {
    items
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect()
}

fn feed_seeds() {
    let time = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    let rs = records();
    let mut snapshot = vec![SnapshotLine::Snapshot(SnapshotHeader {
        store_id: "9a7c-store".into(),
        version: 42,
        participants: 1,
        consents: rs.len() as u64,
        time,
        epoch: 0,
    })];
    snapshot.push(SnapshotLine::Participant(participant()));
    snapshot.extend(rs.iter().cloned().map(SnapshotLine::Consent));
    snapshot.push(SnapshotLine::End(SnapshotTrailer {
        version: 42,
        participants: 1,
        consents: rs.len() as u64,
    }));
    put("feed_line", "snapshot", lines(&snapshot));
    let change = |version, op| FeedLine::Consent(consent_cache::Change { version, op });
    let feed = vec![
        change(43, consent_cache::ChangeOp::Upsert(rs[0].clone())),
        change(
            44,
            consent_cache::ChangeOp::SetStatus {
                id: "c-1".into(),
                status: ConsentStatus::Revoked,
            },
        ),
        change(45, consent_cache::ChangeOp::Remove { id: "c-1".into() }),
        FeedLine::Participant(ParticipantChange {
            version: 46,
            op: ParticipantOp::Upsert(participant()),
        }),
        FeedLine::Heartbeat(Heartbeat {
            version: 46,
            store_id: "9a7c-store".into(),
            time,
            epoch: 0,
        }),
        FeedLine::Resync(Resync {
            version: 46,
            reason: "history_pruned".into(),
        }),
    ];
    put("feed_line", "feed", lines(&feed));
    for (i, l) in feed.iter().enumerate() {
        put(
            "feed_line",
            &format!("line-{i}"),
            serde_json::to_string(l).unwrap(),
        );
    }
}

fn snapshot_seeds() {
    let rs = records();
    let mut jsonl = String::from("{\"snapshot_version\": 7}\n# a comment\n\n");
    jsonl.push_str(&lines(&rs));
    put("snapshot_jsonl", "records", &jsonl);
    put("snapshot_jsonl", "one-line", lines(&rs[..1]));
    put(
        "snapshot_jsonl",
        "duplicate",
        lines(&[rs[0].clone(), rs[0].clone()]),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    write_snapshot(&path, 7, &rs).unwrap();
    let snap = std::fs::read(&path).unwrap();
    put("snapshot_bin", "records-fixed", with_mode(1, &snap));
    put("snapshot_bin", "records-raw", with_mode(0, &snap));
    write_snapshot(&path, 0, Vec::<ConsentRecord>::new()).unwrap();
    put(
        "snapshot_bin",
        "empty",
        with_mode(1, std::fs::read(&path).unwrap()),
    );
}

fn config_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("conf/hub.example.toml")).unwrap();
    put("config", "example", &example);
    let start = example.find("[consents]").unwrap();
    let end = example.find("[audit]").unwrap();
    let trust = "[trust]\nurl = \"https://127.0.0.1:8444\"\nca = [\"pki/ca.pem\"]\nmax_staleness_secs = 30\njwks = true\n\n";
    put(
        "config",
        "trust",
        format!("{}{trust}{}", &example[..start], &example[end..]),
    );
}

fn trust_seeds() {
    let consent = r#"{"customer":"900101300123","providers":["990340000011"],"permissions":["accounts","balances"],"accounts":["KZ1"],"purpose":"PFM","expires_at":"2027-06-01T00:00:00Z"}"#;
    put("trust_body", "create-consent", with_mode(0, consent));
    // Another certificate than the seeded API user's (a thumbprint is owned by one BIN).
    let other = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg";
    let user = format!(r#"{{"name":"Steppe Pay JSC","roles":["user"],"thumbprints":["{other}"]}}"#);
    put(
        "trust_body",
        "participant-user",
        with_mode(1, with_mode(3, user)),
    );
    let provider = r#"{"name":"Altyn Bank JSC","roles":["provider"],"provider_urls":["https://127.0.0.1:9443/api"],"status":"active"}"#;
    put(
        "trust_body",
        "participant-provider",
        with_mode(1, with_mode(4, provider)),
    );
    put(
        "trust_body",
        "status",
        with_mode(2, with_mode(3, r#"{"status":"suspended"}"#)),
    );
    let form = format!(
        "grant_type=client_credentials&client_id={USER}&consent_id=c-1&scope=accounts+balances"
    );
    put("trust_body", "token-form", with_mode(3, form));
    put(
        "trust_body",
        "token-form-escapes",
        with_mode(
            3,
            "grant_type=client_credentials&client_id=%31%30%30140000001&consent_id=c%2D1",
        ),
    );
    put(
        "trust_body",
        "feed-query",
        with_mode(4, "since=5&store_id=9a7c-store"),
    );
}

#[test]
fn every_seed_runs_clean() {
    type Harness = fn(&[u8]);
    let targets: [(&str, Harness); 7] = [
        ("route", hub_fuzz::route::run),
        ("token", hub_fuzz::token::run),
        ("feed_line", hub_fuzz::feed::run),
        ("snapshot_jsonl", hub_fuzz::snapshot::run_jsonl),
        ("snapshot_bin", hub_fuzz::snapshot::run_bin),
        ("config", hub_fuzz::config::run),
        ("trust_body", hub_fuzz::trust_body::run),
    ];
    for (target, run) in targets {
        let entries = std::fs::read_dir(corpus(target)).unwrap();
        let mut n = 0;
        for e in entries {
            run(&std::fs::read(e.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds for {target}");
    }
}
