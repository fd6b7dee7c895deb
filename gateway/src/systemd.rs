//! Telling systemd about the process (the `sd_notify(3)` protocol, one datagram to
//! `$NOTIFY_SOCKET`): `READY=1` once the API listener accepts, with `MAINPID=` this
//! process, so that a unit with `Type=notify` and `NotifyAccess=all` follows the new
//! process of a binary upgrade as its main process (docs/ops/upgrade.md). Nothing is sent
//! when `NOTIFY_SOCKET` is not set, i.e. not under systemd.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Tells the service manager, if there is one, that this process serves and is the
/// service's main process. Logged; a failure does not stop the hub.
pub fn ready() {
    let state = format!("READY=1\nMAINPID={}", std::process::id());
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send(&socket, &state) {
        Ok(()) => tracing::info!(
            pid = std::process::id(),
            "told systemd: ready, main process"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)"),
    }
}

/// Sends `state` to the notification socket `socket`: a path, or an abstract name after
/// `@`.
fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        None => sock.send_to(state.as_bytes(), socket)?,
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification cut short",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    fn received(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_socket_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\nMAINPID=42").expect("sent");
        assert_eq!(received(&listener), "READY=1\nMAINPID=42");

        let name = format!("hub-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(OsStr::new(&format!("@{name}")), "READY=1").expect("sent");
        assert_eq!(received(&listener), "READY=1");

        let missing = dir.path().join("nobody.sock");
        assert!(send(missing.as_os_str(), "READY=1").is_err());
    }
}
