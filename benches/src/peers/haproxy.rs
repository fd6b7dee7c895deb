//! HAProxy 2.6 configured to do the hub's job per request, with the same contract codes:
//! mTLS (platform CA), certificate thumbprint → participant (map), ES256 `jwt_verify` on
//! every request (no cache), `alg`/`kid`/`iss`/`aud`/`exp`/`nbf` and required claims,
//! `client_id` and `cnf.x5t#S256` bound to the connection, scope, the consent looked up
//! in a map file (owner, status, expiry, provider, permission, accounts), per-user,
//! per-user×provider and per-consent×route stick-table rate limits (per-IP on open
//! data), header hygiene, path rewrite, mTLS to the bank, a JSON access log line.
//! Revocation at runtime goes through the admin socket (`set map`).

use std::fmt::Write as _;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{io_at, os, HarnessError, Result};
use crate::fixture::{BenchEnv, ConsentRow, AUDIENCE, ISSUER, KID, THROTTLED_USER};

/// Files of one HAProxy instance.
pub struct HaproxyFiles {
    /// The configuration.
    pub config: PathBuf,
    /// The admin socket.
    pub socket: PathBuf,
    /// The consent map (for `set map`).
    pub consents_map: PathBuf,
}

/// What the configuration needs.
pub struct HaproxySettings {
    /// Listener port.
    pub port: u16,
    /// `nbthread`.
    pub threads: usize,
    /// The two banks.
    pub banks: [SocketAddr; 2],
    /// Generated consents (plus the extras).
    pub consents: usize,
}

/// The consent map's value for `row` (`api_user|customer|permissions|status|expires|restricted`).
pub fn consent_value(env: &BenchEnv, row: &ConsentRow) -> String {
    format!(
        "{}|{}|accounts,balances,transactions|{}|{}|0",
        env.users[row.user],
        row.customer,
        row.status.as_str(),
        env.expires_at()
    )
}

fn problem(status: u16, code: &str, title: &str) -> String {
    let mut hdrs = String::from(" hdr x-fapi-interaction-id %[var(txn.iid)]");
    if status == 401 {
        hdrs.push_str(" hdr WWW-Authenticate 'Bearer error=\"invalid_token\"'");
    }
    if status == 429 {
        hdrs.push_str(" hdr Retry-After 1");
    }
    format!(
        "http-request return status {status} content-type application/problem+json lf-string '{{\"type\":\"https://hub.local.test/problems/{code}\",\"title\":\"{title}\",\"status\":{status},\"code\":\"{code}\",\"interaction_id\":\"%[var(txn.iid)]\"}}'{hdrs}"
    )
}

/// Writes the configuration, the server/client bundles and the map files into `dir`.
pub fn write(env: &BenchEnv, s: &HaproxySettings, dir: &Path) -> Result<HaproxyFiles> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let pki = &env.pki;
    let server_pem = dir.join("server.pem");
    super::write_bundle(
        &pki.hub_server().chain_pem(),
        &pki.hub_server().key_pem,
        &server_pem,
    )?;
    let client_pem = dir.join("upstream-client.pem");
    super::write_bundle(
        &pki.hub_client().cert_pem,
        &pki.hub_client().key_pem,
        &client_pem,
    )?;
    let ca = pki.ca_cert_path().to_path_buf();
    let maps = write_maps(env, s, dir)?;
    let socket = dir.join("admin.sock");
    let m = |p: &Path| p.display().to_string();
    let listener = Listener {
        port: s.port,
        server_pem: m(&server_pem),
        ca: m(&ca),
    };
    let mut c = config(env, s.threads, &socket, &listener, &maps);
    c.push('\n');
    for (b, addr) in env.providers.iter().zip(s.banks) {
        let _ = writeln!(
            c,
            "backend bank_{b}\n  http-reuse always\n  server bank {addr} ssl crt {} ca-file {} verify required sni str(localhost) verifyhost localhost alpn http/1.1\n",
            m(&client_pem),
            m(&ca)
        );
    }
    let _ = writeln!(
        c,
        "backend st_user\n  stick-table type string len 16 size 100k expire 30s store http_req_rate(1s)\n\n\
         backend st_user_provider\n  stick-table type string len 32 size 100k expire 30s store http_req_rate(1s)\n\n\
         backend st_consent_route\n  stick-table type string len 64 size 2m expire 30s store http_req_rate(1s)\n\n\
         backend st_ip\n  stick-table type ip size 100k expire 30s store http_req_rate(1s)"
    );
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, c).map_err(io_at(&config))?;
    Ok(HaproxyFiles {
        config,
        socket,
        consents_map: maps.consents,
    })
}

/// The map files the configuration looks things up in.
struct Maps {
    /// Certificate thumbprint → `api_user|status|roles`.
    participants: PathBuf,
    /// Consent id → its [`consent_value`].
    consents: PathBuf,
    /// `consent|provider` → 1.
    consent_providers: PathBuf,
    /// `consent|account` → 1.
    consent_accounts: PathBuf,
    /// Provider BIN → its backend.
    providers: PathBuf,
    /// API user → its rate limit (overrides).
    limits: PathBuf,
}

/// Writes the map files into `dir`.
fn write_maps(env: &BenchEnv, s: &HaproxySettings, dir: &Path) -> Result<Maps> {
    let participants = dir.join("participants.map");
    let mut p = String::new();
    for (i, u) in env.users.iter().enumerate() {
        let _ = writeln!(p, "{} {u}|active|user", env.user_identity(i)?.x5t_s256);
    }
    std::fs::write(&participants, p).map_err(io_at(&participants))?;
    let consents = dir.join("consents.map");
    let consent_providers = dir.join("consent_providers.map");
    write_consent_maps(env, s.consents, &consents, &consent_providers)?;
    let consent_accounts = dir.join("consent_accounts.map");
    std::fs::write(
        &consent_accounts,
        "# consent|account 1 (no bench consent is restricted)\n",
    )
    .map_err(io_at(&consent_accounts))?;
    let providers = dir.join("providers.map");
    let mut pm = String::new();
    for b in &env.providers {
        let _ = writeln!(pm, "{b} bank_{b}");
    }
    std::fs::write(&providers, pm).map_err(io_at(&providers))?;
    let limits = dir.join("limits.map");
    std::fs::write(&limits, format!("{THROTTLED_USER} 1\n")).map_err(io_at(&limits))?;
    Ok(Maps {
        participants,
        consents,
        consent_providers,
        consent_accounts,
        providers,
        limits,
    })
}

/// The consent map and the consent → provider map of `count` generated consents plus
/// the extras.
fn write_consent_maps(
    env: &BenchEnv,
    count: usize,
    consents_map: &Path,
    consent_providers: &Path,
) -> Result<()> {
    let f = std::fs::File::create(consents_map).map_err(io_at(consents_map))?;
    let g = std::fs::File::create(consent_providers).map_err(io_at(consent_providers))?;
    let (mut f, mut g) = (BufWriter::new(f), BufWriter::new(g));
    let rows = (0..count)
        .map(|i| env.consent(i))
        .chain(env.extra_consents());
    for row in rows {
        writeln!(f, "{} {}", row.id, consent_value(env, &row)).map_err(io_at(consents_map))?;
        writeln!(g, "{}|{} 1", row.id, env.providers[row.provider])
            .map_err(io_at(consent_providers))?;
    }
    f.flush().map_err(io_at(consents_map))?;
    g.flush().map_err(io_at(consent_providers))
}

/// Every problem answer of the configuration: its status and `code` (the title is the
/// code in words).
const PROBLEMS: [(u16, &str); 18] = [
    (400, "bad_request"),
    (404, "route_not_found"),
    (405, "method_not_allowed"),
    (403, "participant_unknown"),
    (403, "participant_inactive"),
    (404, "provider_not_found"),
    (429, "rate_limited"),
    (401, "invalid_token"),
    (401, "token_binding_mismatch"),
    (403, "insufficient_scope"),
    (403, "consent_not_found"),
    (403, "consent_not_owned"),
    (403, "consent_revoked"),
    (403, "consent_expired"),
    (403, "consent_not_authorised"),
    (403, "provider_not_in_consent"),
    (403, "permission_not_granted"),
    (403, "account_not_in_consent"),
];

/// `global`, `defaults` and the frontend, with `{name}` placeholders (see [`config`]):
/// the files, the listener, the token's key and claims, each problem answer by its code.
const FRONTEND: &str = r#"# Generated by the benches' compare runner: HAProxy doing the hub's policy job.
global
  nbthread {threads}
  maxconn 8000
  stats socket {socket} mode 600 level admin
  log stdout format raw local0
  ssl-server-verify required

defaults
  mode http
  log global
  option dontlognull
  timeout connect 1s
  timeout client 60s
  timeout server 5s
  timeout http-request 10s
  timeout http-keep-alive 60s

frontend hub
  bind 127.0.0.1:{port} ssl crt {server_pem} ca-file {ca} verify required alpn h2,http/1.1
  log-format '{"time":"%t","interaction_id":"%[var(txn.iid)]","api_user":"%[var(txn.user)]","provider":"%[var(txn.provider)]","consent":"%[var(txn.consent_id)]","route":"%[var(txn.perm)]","status":%ST,"upstream_ms":%Tr,"ms":%Ta}'

  # x-fapi-interaction-id: the caller's if it is a UUID, else a new one.
  http-request set-var(txn.iid) req.hdr(x-fapi-interaction-id) if { req.hdr(x-fapi-interaction-id) -m reg -i ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ }
  http-request set-var(txn.iid) uuid unless { var(txn.iid) -m found }

  # Row 1: strict path, route table, method.
  acl bad_path path -m sub .. // % ;
  acl has_query query -m found
  acl p_acc_list path -m reg ^/v1/providers/[0-9]{12}/accounts$
  acl p_acc_one path -m reg ^/v1/providers/[0-9]{12}/accounts/[A-Za-z0-9._~-]+$
  acl p_balances path -m reg ^/v1/providers/[0-9]{12}/accounts/[A-Za-z0-9._~-]+/balances$
  acl p_tx path -m reg ^/v1/providers/[0-9]{12}/accounts/[A-Za-z0-9._~-]+/transactions$
  acl p_open path -m reg ^/v1/open-data/[0-9]{12}/(exchange-rates|branches|atms|products)$
  acl p_consent var(txn.perm) -m found
  {bad_request} if bad_path
  {bad_request} if has_query !p_tx
  {route_not_found} unless p_acc_list or p_acc_one or p_balances or p_tx or p_open
  {method_not_allowed} unless METH_GET
  http-request set-var(txn.perm) str(accounts) if p_acc_list or p_acc_one
  http-request set-var(txn.perm) str(balances) if p_balances
  http-request set-var(txn.perm) str(transactions) if p_tx
  http-request set-var(txn.provider) path,field(4,/)
  http-request set-var(txn.account) path,field(6,/) if p_acc_one or p_balances or p_tx

  # Rows 2-3: the certificate's x5t#S256 names an active participant with role user.
  http-request set-var(txn.tp) ssl_c_der,sha2(256),ub64enc
  http-request set-var(txn.pinfo) var(txn.tp),map({participants})
  {participant_unknown} unless { var(txn.pinfo) -m found }
  http-request set-var(txn.user) var(txn.pinfo),field(1,|)
  {participant_inactive} unless { var(txn.pinfo),field(2,|) -m str active } { var(txn.pinfo),field(3,|) -m sub user }
  http-request set-var(txn.backend) var(txn.provider),map({providers})

  # Open data skips rows 4-14: provider, per-IP limit.
  {provider_not_found} if p_open !{ var(txn.backend) -m found }
  http-request track-sc0 src table st_ip if p_open
  {rate_limited} if p_open { sc_http_req_rate(0) gt 10000000 }

  # Row 4: bearer JWT, ES256 only, our kid, signature verified on every request.
  http-request set-var(txn.bearer) http_auth_bearer if p_consent
  {invalid_token} if p_consent !{ var(txn.bearer) -m found }
  {invalid_token} if p_consent { var(txn.bearer),length gt 8192 }
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg') if p_consent
  {invalid_token} if p_consent !{ var(txn.alg) -m str ES256 }
  {invalid_token} if p_consent !{ var(txn.bearer),jwt_header_query('$.kid') -m str {KID} }
  http-request set-var(txn.sig) var(txn.bearer),jwt_verify(txn.alg,"{pubkey}") if p_consent
  {invalid_token} if p_consent !{ var(txn.sig) -m int 1 }
  http-request set-var(txn.now) date
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss') if p_consent
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud') if p_consent
  http-request set-var(txn.exp_left) var(txn.bearer),jwt_payload_query('$.exp','int'),add(30),sub(txn.now) if p_consent
  http-request set-var(txn.nbf_wait) var(txn.bearer),jwt_payload_query('$.nbf','int'),sub(30),sub(txn.now) if p_consent
  http-request set-var(txn.iat) var(txn.bearer),jwt_payload_query('$.iat','int') if p_consent
  http-request set-var(txn.jti) var(txn.bearer),jwt_payload_query('$.jti') if p_consent
  http-request set-var(txn.client_id) var(txn.bearer),jwt_payload_query('$.client_id') if p_consent
  http-request set-var(txn.consent_id) var(txn.bearer),jwt_payload_query('$.consent_id') if p_consent
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope') if p_consent
  http-request set-var(txn.cnf) var(txn.bearer),jwt_payload_query('$.cnf.x5t#S256') if p_consent
  {invalid_token} if p_consent !{ var(txn.iss) -m str {ISSUER} }
  {invalid_token} if p_consent !{ var(txn.aud) -m str {AUDIENCE} }
  {invalid_token} if p_consent !{ var(txn.exp_left) -m int gt 0 }
  {invalid_token} if p_consent { var(txn.nbf_wait) -m int gt 0 }
  {invalid_token} if p_consent !{ var(txn.iat) -m found } or p_consent !{ var(txn.jti) -m found } or p_consent !{ var(txn.client_id) -m found }
  {invalid_token} if p_consent !{ var(txn.consent_id) -m found } or p_consent !{ var(txn.scope) -m found } or p_consent !{ var(txn.cnf) -m found }

  # Row 5: client_id and cnf.x5t#S256 bound to this connection.
  {token_binding_mismatch} if p_consent !{ var(txn.client_id),strcmp(txn.user) eq 0 }
  {token_binding_mismatch} if p_consent !{ var(txn.cnf),strcmp(txn.tp) eq 0 }

  # Row 6: scope grants the route's permission.
  {insufficient_scope} if { var(txn.perm) -m str accounts } !{ var(txn.scope) -m reg (^|\ )accounts(\ |$) }
  {insufficient_scope} if { var(txn.perm) -m str balances } !{ var(txn.scope) -m reg (^|\ )balances(\ |$) }
  {insufficient_scope} if { var(txn.perm) -m str transactions } !{ var(txn.scope) -m reg (^|\ )transactions(\ |$) }

  # Rows 8-14: the consent (map: api_user|customer|permissions|status|expires|restricted).
  http-request set-var(txn.cinfo) var(txn.consent_id),map({consents}) if p_consent
  {consent_not_found} if p_consent !{ var(txn.cinfo) -m found }
  {consent_not_owned} if p_consent !{ var(txn.cinfo),field(1,|),strcmp(txn.user) eq 0 }
  http-request set-var(txn.cstatus) var(txn.cinfo),field(4,|) if p_consent
  {consent_revoked} if p_consent { var(txn.cstatus) -m str revoked }
  {consent_expired} if p_consent { var(txn.cstatus) -m str expired }
  {consent_not_authorised} if p_consent !{ var(txn.cstatus) -m str authorised }
  http-request set-var(txn.cleft) var(txn.cinfo),field(5,|),sub(txn.now) if p_consent
  {consent_expired} if p_consent !{ var(txn.cleft) -m int gt 0 }
  http-request set-var(txn.cpkey) var(txn.consent_id),concat(|,txn.provider,) if p_consent
  {provider_not_in_consent} if p_consent !{ var(txn.cpkey),map({consent_providers}) -m found }
  {permission_not_granted} if { var(txn.perm) -m str accounts } !{ var(txn.cinfo),field(3,|) -m reg (^|,)accounts(,|$) }
  {permission_not_granted} if { var(txn.perm) -m str balances } !{ var(txn.cinfo),field(3,|) -m reg (^|,)balances(,|$) }
  {permission_not_granted} if { var(txn.perm) -m str transactions } !{ var(txn.cinfo),field(3,|) -m reg (^|,)transactions(,|$) }
  http-request set-var(txn.cakey) var(txn.consent_id),concat(|,txn.account,) if { var(txn.account) -m found } { var(txn.cinfo),field(6,|) -m str 1 }
  {account_not_in_consent} if { var(txn.cakey) -m found } !{ var(txn.cakey),map({consent_accounts}) -m found }

  # Row 15: the provider is known.
  {provider_not_found} if p_consent !{ var(txn.backend) -m found }

  # Row 16: rate limits (per user with overrides, per user x provider, per consent x route).
  http-request track-sc0 var(txn.user) table st_user if p_consent
  http-request set-var(txn.up) var(txn.user),concat(|,txn.provider,) if p_consent
  http-request track-sc1 var(txn.up) table st_user_provider if p_consent
  http-request set-var(txn.cr) var(txn.consent_id),concat(|,txn.perm,) if p_consent
  http-request track-sc2 var(txn.cr) table st_consent_route if p_consent
  http-request set-var(txn.limit) var(txn.user),map({limits},10000000) if p_consent
  {rate_limited} if p_consent { sc_http_req_rate(0),sub(txn.limit) gt 0 }
  {rate_limited} if p_consent { sc_http_req_rate(1) gt 10000000 }
  {rate_limited} if p_consent { sc_http_req_rate(2) gt 10000000 }

  # Contract section 3: what goes upstream.
  http-request del-header authorization
  http-request del-header x-hub- -m beg
  http-request del-header forwarded
  http-request del-header x-forwarded- -m beg
  http-request del-header cookie
  http-request set-header x-fapi-interaction-id %[var(txn.iid)]
  http-request set-header x-hub-api-user %[var(txn.user)] if p_consent
  http-request set-header x-hub-consent-id %[var(txn.consent_id)] if p_consent
  http-request set-header x-hub-customer %[var(txn.cinfo),field(2,|)] if p_consent
  http-request set-header x-hub-permissions %[var(txn.cinfo),field(3,|)] if p_consent
  http-request set-path %[path,regsub(^/v1/providers/[0-9]+/,/v1/)] if p_consent
  http-request set-path %[path,regsub(^/v1/open-data/[0-9]+/,/v1/open-data/)] if p_open
  http-response del-header server
  http-response del-header x-internal-host
  http-response set-header cache-control no-store if { var(txn.perm) -m found }
  http-response set-header x-fapi-interaction-id %[var(txn.iid)]
  use_backend %[var(txn.backend)]
"#;

/// Where the frontend listens and what it presents and trusts.
struct Listener {
    port: u16,
    server_pem: String,
    ca: String,
}

/// [`FRONTEND`] filled in.
fn config(env: &BenchEnv, threads: usize, socket: &Path, l: &Listener, maps: &Maps) -> String {
    let m = |p: &Path| p.display().to_string();
    let mut vars: Vec<(&str, String)> = vec![
        ("threads", threads.max(1).to_string()),
        ("socket", m(socket)),
        ("port", l.port.to_string()),
        ("server_pem", l.server_pem.clone()),
        ("ca", l.ca.clone()),
        ("participants", m(&maps.participants)),
        ("providers", m(&maps.providers)),
        ("consents", m(&maps.consents)),
        ("consent_providers", m(&maps.consent_providers)),
        ("consent_accounts", m(&maps.consent_accounts)),
        ("limits", m(&maps.limits)),
        ("pubkey", m(&env.issuer_public_pem)),
        ("KID", KID.to_string()),
        ("ISSUER", ISSUER.to_string()),
        ("AUDIENCE", AUDIENCE.to_string()),
    ];
    vars.extend(
        PROBLEMS
            .iter()
            .map(|&(status, code)| (code, problem(status, code, &words(code)))),
    );
    fill(FRONTEND, &vars)
}

/// A problem code in words: `consent_not_found` → `Consent not found`.
fn words(code: &str) -> String {
    let spaced = code.replace('_', " ");
    let mut chars = spaced.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// `template` with every `{name}` of `vars` replaced by its value, in one pass (other
/// braces stay as they are).
fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sends runtime-API commands (`;`-joined) to the admin socket; returns the answer.
pub fn admin(socket: &Path, commands: &[String]) -> Result<String> {
    let mut out = String::new();
    // Keep each line reasonably short; the CLI reads one line per connection.
    for chunk in commands.chunks(200) {
        let mut s = UnixStream::connect(socket).map_err(os(format!(
            "connecting to HAProxy's admin socket {}",
            socket.display()
        )))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(os("admin socket timeout"))?;
        let line = format!("{}\n", chunk.join(";"));
        s.write_all(line.as_bytes())
            .map_err(os("admin socket write"))?;
        s.read_to_string(&mut out)
            .map_err(os("admin socket read"))?;
    }
    if out.to_ascii_lowercase().contains("unknown") || out.contains("not found") {
        return Err(HarnessError::Process {
            name: "haproxy admin".into(),
            reason: out.trim().chars().take(300).collect(),
        });
    }
    Ok(out)
}

/// `set map` commands giving `rows` their current status in the consent map.
pub fn set_map_commands(env: &BenchEnv, map: &Path, rows: &[ConsentRow]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "set map {} {} {}",
                map.display(),
                r.id,
                consent_value(env, r)
            )
        })
        .collect()
}
