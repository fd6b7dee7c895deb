//! The rescue table: from a pingora error (what failed, on which side) to the contract's
//! code (rows 17–19 and the transport-level codes), or to nothing when the client is gone
//! and no answer can reach it.

use pingora::prelude::*;
use pingora::protocols::http::REQUEST_HEADER_TOO_LARGE;

use policy::code::Code;

/// The client went away while its request was in flight: it closed or reset the
/// connection (e.g. without TLS close_notify), stopped reading, or stopped sending. Nothing
/// can be answered and it is no fault of the hub or the provider.
pub(super) fn client_gone(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::WriteError
                | ErrorType::ReadError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout
        )
}

/// Maps a proxying error to the contract's code (rows 17–19 and request-level failures).
/// `None` means the downstream connection is gone and nothing can be answered.
pub(super) fn failure_code(e: &Error) -> Option<Code> {
    match e.etype() {
        ErrorType::HTTPStatus(s) => return Some(status_code(*s)),
        t if *t == REQUEST_HEADER_TOO_LARGE => return Some(Code::RequestHeaderFieldsTooLarge),
        _ => {}
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Code::ProviderTimeout
            }
            ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2
            | ErrorType::H2Downgrade => Code::ProviderBadResponse,
            _ => Code::ProviderUnavailable,
        }),
        ErrorSource::Downstream if client_gone(e) => None,
        ErrorSource::Downstream => Some(Code::BadRequest),
        ErrorSource::Internal | ErrorSource::Unset => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Code::ProviderTimeout
            }
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::ConnectionClosed => Code::ProviderUnavailable,
            _ => Code::InternalError,
        }),
    }
}

/// An `HTTPStatus` error raised by the hub's own phases (e.g. a body over the limit).
fn status_code(status: u16) -> Code {
    match status {
        413 => Code::PayloadTooLarge,
        431 => Code::RequestHeaderFieldsTooLarge,
        400 => Code::BadRequest,
        _ => Code::InternalError,
    }
}

/// The answer to a request pingora could not read (`malformed_request_response`): its
/// header block is over pingora's size limit, or it is malformed. Whichever side the
/// error is marked with, the fault is the request's.
pub(super) fn malformed_code(e: &Error) -> Code {
    if *e.etype() == REQUEST_HEADER_TOO_LARGE {
        Code::RequestHeaderFieldsTooLarge
    } else {
        Code::BadRequest
    }
}

/// The provider failed (rather than the request or the hub): counts against the base URL
/// for passive health checking.
pub(super) fn is_upstream_failure(code: Code) -> bool {
    matches!(
        code,
        Code::ProviderTimeout | Code::ProviderUnavailable | Code::ProviderBadResponse
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    // Named one by one: pingora's prelude also has an `InternalError`.
    use Code::{
        BadRequest, InternalError, PayloadTooLarge, ProviderBadResponse, ProviderTimeout,
        ProviderUnavailable, RequestHeaderFieldsTooLarge,
    };

    const SOURCES: [ErrorSource; 4] = [
        ErrorSource::Upstream,
        ErrorSource::Downstream,
        ErrorSource::Internal,
        ErrorSource::Unset,
    ];

    fn err(etype: ErrorType, source: &ErrorSource) -> Box<Error> {
        let mut e = Error::new(etype);
        match source {
            ErrorSource::Upstream => e.as_up(),
            ErrorSource::Downstream => e.as_down(),
            ErrorSource::Internal => e.as_in(),
            ErrorSource::Unset => {}
        }
        e
    }

    /// Every kind pingora 0.9 has; the match fails to compile when pingora adds one, so
    /// the table below must be extended with it.
    fn every_kind() -> Vec<ErrorType> {
        use ErrorType as T;
        let all = vec![
            T::ConnectTimedout,
            T::ConnectRefused,
            T::ConnectNoRoute,
            T::TLSWantX509Lookup,
            T::TLSHandshakeFailure,
            T::TLSHandshakeTimedout,
            T::InvalidCert,
            T::HandshakeError,
            T::ConnectError,
            T::BindError,
            T::AcceptError,
            T::SocketError,
            T::ConnectProxyFailure,
            T::InvalidHTTPHeader,
            T::H1Error,
            T::H2Error,
            T::H2Downgrade,
            T::InvalidH2,
            T::ReadError,
            T::WriteError,
            T::ReadTimedout,
            T::WriteTimedout,
            T::ConnectionClosed,
            T::HTTPStatus(413),
            T::FileOpenError,
            T::FileCreateError,
            T::FileReadError,
            T::FileWriteError,
            T::InternalError,
            T::UnknownError,
            T::Custom("anything"),
            T::CustomCode("anything", 7),
        ];
        for t in &all {
            match t {
                T::ConnectTimedout
                | T::ConnectRefused
                | T::ConnectNoRoute
                | T::TLSWantX509Lookup
                | T::TLSHandshakeFailure
                | T::TLSHandshakeTimedout
                | T::InvalidCert
                | T::HandshakeError
                | T::ConnectError
                | T::BindError
                | T::AcceptError
                | T::SocketError
                | T::ConnectProxyFailure
                | T::InvalidHTTPHeader
                | T::H1Error
                | T::H2Error
                | T::H2Downgrade
                | T::InvalidH2
                | T::ReadError
                | T::WriteError
                | T::ReadTimedout
                | T::WriteTimedout
                | T::ConnectionClosed
                | T::HTTPStatus(_)
                | T::FileOpenError
                | T::FileCreateError
                | T::FileReadError
                | T::FileWriteError
                | T::InternalError
                | T::UnknownError
                | T::Custom(_)
                | T::CustomCode(..) => {}
            }
        }
        all
    }

    /// The rescue table, column by source: Upstream, Downstream, Internal, Unset.
    /// `None`: the client is gone, nothing is answered.
    fn expected(etype: &ErrorType) -> [Option<Code>; 4] {
        let (u, d, i) = (ProviderUnavailable, BadRequest, InternalError);
        let [t, b] = [ProviderTimeout, ProviderBadResponse];
        let row =
            |up: Code, down: Option<Code>, inner: Code| [Some(up), down, Some(inner), Some(inner)];
        match etype {
            ErrorType::ConnectTimedout => row(t, Some(d), t),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => row(t, None, t),
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure => row(u, Some(d), u),
            ErrorType::ConnectionClosed => row(u, None, u),
            ErrorType::ReadError | ErrorType::WriteError => row(u, None, i),
            ErrorType::InvalidHTTPHeader
            | ErrorType::H1Error
            | ErrorType::H2Error
            | ErrorType::InvalidH2
            | ErrorType::H2Downgrade => row(b, Some(d), i),
            ErrorType::HTTPStatus(_) => [Some(PayloadTooLarge); 4],
            _ => row(u, Some(d), i),
        }
    }

    #[test]
    fn every_error_kind_from_every_side_has_its_code() {
        for etype in every_kind() {
            for (source, want) in SOURCES.iter().zip(expected(&etype)) {
                let e = err(etype.clone(), source);
                assert_eq!(failure_code(&e), want, "{etype:?} from {source:?}");
                // Only a client that went away is left unanswered.
                assert_eq!(client_gone(&e), want.is_none(), "{etype:?} from {source:?}");
            }
        }
    }

    #[test]
    fn statuses_raised_by_the_phases_keep_their_meaning() {
        for (status, code) in [
            (400, BadRequest),
            (413, PayloadTooLarge),
            (431, RequestHeaderFieldsTooLarge),
            (500, InternalError),
            (502, InternalError),
        ] {
            for source in &SOURCES {
                let e = err(ErrorType::HTTPStatus(status), source);
                assert_eq!(failure_code(&e), Some(code), "{status} from {source:?}");
            }
        }
    }

    #[test]
    fn an_oversized_header_block_is_431_and_anything_else_unreadable_is_400() {
        for source in &SOURCES {
            let e = err(REQUEST_HEADER_TOO_LARGE, source);
            assert_eq!(failure_code(&e), Some(RequestHeaderFieldsTooLarge));
            assert_eq!(malformed_code(&e), RequestHeaderFieldsTooLarge);
            let e = err(ErrorType::InvalidHTTPHeader, source);
            assert_eq!(malformed_code(&e), BadRequest);
        }
    }

    #[test]
    fn only_provider_failures_count_against_a_base_url() {
        for code in Code::ALL {
            let provider = matches!(
                code,
                ProviderTimeout | ProviderUnavailable | ProviderBadResponse
            );
            assert_eq!(is_upstream_failure(code), provider, "{code:?}");
        }
    }
}
