//! `[trust]`'s endpoints: `url` (one sidecar) or `urls` (several replicas of one
//! database), read as one list whose entries errors can point at. What each URL must be
//! (`https://host[:port][/prefix]`) is checked where it is parsed, `plane::Endpoint`.

use toml::Spanned;

use super::{ConfigError, Source, TrustSection};

impl TrustSection {
    /// The value errors about the whole section point at: `url`, else the first of
    /// `urls` (line 0 when neither has a position).
    pub fn anchor(&self) -> &Spanned<String> {
        match &self.urls {
            Some(list) if self.url.get_ref().is_empty() => {
                list.get_ref().first().unwrap_or(&self.url)
            }
            _ => &self.url,
        }
    }

    /// Whether `url` was given (an explicit `url = ""` counts, and is refused as a URL).
    fn has_url(&self) -> bool {
        !self.url.get_ref().is_empty() || self.url.span().end > 0
    }

    /// The endpoints' URLs in order, each with the field it is reported under
    /// (`trust.url` or `trust.urls[i]`). Refused: both `url` and `urls`, neither, an
    /// empty list, the same URL twice.
    pub fn endpoint_urls(
        &self,
        src: &Source,
    ) -> Result<Vec<(String, &Spanned<String>)>, ConfigError> {
        let list = match (self.has_url(), &self.urls) {
            (true, Some(list)) => {
                return Err(src.invalid(list, "trust.urls", "give `url` or `urls`, not both"))
            }
            (true, None) => return Ok(vec![("trust.url".to_string(), &self.url)]),
            (false, None) => {
                let message = "a trust endpoint is required: `url = \"https://…\"` or `urls = [\"https://…\", …]`";
                return Err(match self.ca.first() {
                    Some(ca) => src.invalid(ca, "trust.urls", message),
                    None => src.invalid_here("trust.urls", message),
                });
            }
            (false, Some(list)) => list,
        };
        if list.get_ref().is_empty() {
            return Err(src.invalid(list, "trust.urls", "at least one endpoint is required"));
        }
        let mut out: Vec<(String, &Spanned<String>)> = Vec::with_capacity(list.get_ref().len());
        for (i, url) in list.get_ref().iter().enumerate() {
            let field = format!("trust.urls[{i}]");
            let same = |earlier: &Spanned<String>| {
                earlier.get_ref().trim_end_matches('/') == url.get_ref().trim_end_matches('/')
            };
            if let Some(j) = out.iter().position(|(_, earlier)| same(earlier)) {
                let message = format!("the same endpoint as trust.urls[{j}]");
                return Err(src.invalid(url, &field, message));
            }
            out.push((field, url));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;

    /// The `[trust]` section of `text` as parsed, and its source.
    fn parsed(text: &str) -> (tempfile::TempDir, Source, TrustSection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.toml");
        std::fs::write(&path, text).unwrap();
        let src = Source::read(&path).unwrap();
        let t: TrustOnly = toml::from_str(text).unwrap();
        (dir, src, t.trust)
    }

    #[derive(serde::Deserialize)]
    struct TrustOnly {
        trust: TrustSection,
    }

    fn refused(text: &str) -> (usize, String, String) {
        let (_dir, src, t) = parsed(text);
        match t.endpoint_urls(&src) {
            Err(ConfigError::Invalid {
                line,
                field,
                message,
                ..
            }) => (line, field, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn url_is_a_list_of_one_and_urls_lists_replicas_in_order() {
        let (_dir, src, t) = parsed("[trust]\nurl = \"https://a:1\"\nca = [\"ca.pem\"]\n");
        let urls = t.endpoint_urls(&src).unwrap();
        assert_eq!(urls.len(), 1);
        assert_eq!(
            (urls[0].0.as_str(), urls[0].1.get_ref().as_str()),
            ("trust.url", "https://a:1")
        );
        assert_eq!(t.heartbeat_secs, defaults::HEARTBEAT_SECS);

        let text = "[trust]\nurls = [\n  \"https://a:1\",\n  \"https://b:2/x\",\n]\nca = [\"ca.pem\"]\nheartbeat_secs = 1\n";
        let (_dir, src, t) = parsed(text);
        let urls: Vec<(String, String)> = t
            .endpoint_urls(&src)
            .unwrap()
            .into_iter()
            .map(|(f, u)| (f, u.get_ref().clone()))
            .collect();
        assert_eq!(
            urls,
            vec![
                ("trust.urls[0]".to_string(), "https://a:1".to_string()),
                ("trust.urls[1]".to_string(), "https://b:2/x".to_string()),
            ]
        );
        assert_eq!(t.heartbeat_secs, 1);
        assert_eq!(src.line_of(t.anchor().span().start), 3, "the first entry");
    }

    #[test]
    fn both_neither_an_empty_list_or_a_repeated_endpoint_are_refused_with_their_line() {
        let (line, field, message) = refused(
            "[trust]\nurl = \"https://a:1\"\nurls = [\"https://b:2\"]\nca = [\"ca.pem\"]\n",
        );
        assert_eq!((line, field.as_str()), (3, "trust.urls"));
        assert!(message.contains("not both"), "{message}");

        let (line, field, _) = refused("[trust]\nca = [\"ca.pem\"]\n");
        assert_eq!((line, field.as_str()), (2, "trust.urls"));

        let (line, field, message) = refused("[trust]\nca = [\"ca.pem\"]\nurls = []\n");
        assert_eq!((line, field.as_str()), (3, "trust.urls"));
        assert!(message.contains("at least one"), "{message}");

        let (line, field, message) = refused(
            "[trust]\nurls = [\n\"https://a:1\",\n\"https://a:1/\",\n]\nca = [\"ca.pem\"]\n",
        );
        assert_eq!((line, field.as_str()), (4, "trust.urls[1]"));
        assert!(message.contains("trust.urls[0]"), "{message}");
    }

    #[test]
    fn a_written_configuration_reads_back_the_same_endpoints() {
        let ca = [std::path::PathBuf::from("ca.pem")];
        let one = TrustSection::new("https://a:1", &ca);
        let many = TrustSection::replicas(&["https://a:1".into(), "https://b:2".into()], &ca);
        for (t, want) in [
            (one, vec!["https://a:1"]),
            (many, vec!["https://a:1", "https://b:2"]),
        ] {
            let text = format!("[trust]\n{}", toml::to_string(&t).unwrap());
            assert_eq!(text.contains("url ="), want.len() == 1, "{text}");
            let (_dir, src, back) = parsed(&text);
            let urls: Vec<String> = back
                .endpoint_urls(&src)
                .unwrap()
                .into_iter()
                .map(|(_, u)| u.get_ref().clone())
                .collect();
            assert_eq!(urls, want, "{text}");
        }
    }
}
