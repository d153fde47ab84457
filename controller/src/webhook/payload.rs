//! What a webhook says: a ping, a push of a branch of some repository, or something
//! this receiver does not act on. Pure: provider, event name and body in.
//!
//! Only the fields needed are read, so new fields in the hosts' payloads never break
//! parsing: `ref` (`refs/heads/<branch>`) and the repository's URLs (GitHub and
//! Gitea/Forgejo: `repository.clone_url`, `ssh_url`, `html_url`, …; GitLab:
//! `project.git_http_url`, `git_ssh_url`, `web_url`, …).

use serde_json::Value;

use super::signature::Provider;

/// A push of one ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// The pushed branch; `None` for the generic form without a body (check every
    /// watched branch).
    pub branch: Option<String>,
    /// Every URL of the repository the payload names (clone, ssh, web); empty when the
    /// generic form names none.
    pub repository_urls: Vec<String>,
}

/// What a webhook asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The host checks the hook works (GitHub's `ping`); answered, never acted on.
    Ping,
    /// A push: a head check may be due.
    Push(Push),
    /// Nothing to do; the reason is returned to the sender.
    Ignored(String),
}

/// Why a body could not be read (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or not a JSON object.
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    /// A push without `ref`.
    #[error("the push payload has no \"ref\"")]
    MissingRef,
    /// A push without any repository URL.
    #[error("the push payload names no repository URL")]
    MissingRepository,
}

/// Repository URL fields, in the objects GitHub, Gitea/Forgejo (`repository`) and
/// GitLab (`project`, and the older `repository`) send.
const URL_FIELDS: &[&str] = &[
    "clone_url",
    "ssh_url",
    "git_url",
    "html_url",
    "url",
    "svn_url",
    "git_http_url",
    "git_ssh_url",
    "http_url",
    "web_url",
    "homepage",
];

/// Reads a webhook `body` of `provider` with event name `event` (the provider's event
/// header, when it sends one).
pub fn parse(provider: Provider, event: Option<&str>, body: &[u8]) -> Result<Event, PayloadError> {
    match provider {
        Provider::GitHub | Provider::Gitea | Provider::Forgejo => match event {
            Some("ping") => Ok(Event::Ping),
            Some("push") | None => push(&json_object(body)?, true),
            Some(other) => Ok(Event::Ignored(format!("event {other:?} is not a push"))),
        },
        Provider::GitLab => {
            let value = json_object(body)?;
            let kind = value.get("object_kind").and_then(Value::as_str);
            match (event, kind) {
                (Some("Tag Push Hook"), _) | (_, Some("tag_push")) => {
                    Ok(Event::Ignored("tag pushes are not built".into()))
                }
                // System hooks carry the kind in the body only.
                (Some("Push Hook") | Some("System Hook") | None, Some("push") | None) => {
                    push(&value, true)
                }
                (Some(other), _) => Ok(Event::Ignored(format!("event {other:?} is not a push"))),
                (None, Some(other)) => Ok(Event::Ignored(format!("event {other:?} is not a push"))),
            }
        }
        Provider::Generic => {
            if body.trim_ascii().is_empty() {
                return Ok(Event::Push(Push {
                    branch: None,
                    repository_urls: Vec::new(),
                }));
            }
            let value = json_object(body)?;
            if value.get("ref").is_none() {
                return Ok(Event::Push(Push {
                    branch: None,
                    repository_urls: repository_urls(&value),
                }));
            }
            push(&value, false)
        }
    }
}

fn json_object(body: &[u8]) -> Result<Value, PayloadError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(PayloadError::NotJson("expected an object".into()))
    }
}

fn push(value: &Value, repository_required: bool) -> Result<Event, PayloadError> {
    let reference = value
        .get("ref")
        .and_then(Value::as_str)
        .ok_or(PayloadError::MissingRef)?;
    let branch = match branch_of(reference) {
        RefKind::Branch(b) => b.to_string(),
        RefKind::Tag => return Ok(Event::Ignored("tag pushes are not built".into())),
        RefKind::Other => {
            return Ok(Event::Ignored(format!("ref {reference:?} is not a branch")));
        }
    };
    let repository_urls = repository_urls(value);
    if repository_required && repository_urls.is_empty() {
        return Err(PayloadError::MissingRepository);
    }
    Ok(Event::Push(Push {
        branch: Some(branch),
        repository_urls,
    }))
}

enum RefKind<'a> {
    Branch(&'a str),
    Tag,
    Other,
}

fn branch_of(reference: &str) -> RefKind<'_> {
    if let Some(branch) = reference
        .strip_prefix("refs/heads/")
        .filter(|b| !b.is_empty())
    {
        RefKind::Branch(branch)
    } else if reference.starts_with("refs/tags/") {
        RefKind::Tag
    } else {
        RefKind::Other
    }
}

fn repository_urls(value: &Value) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for object in ["repository", "project"] {
        let Some(object) = value.get(object) else {
            continue;
        };
        for field in URL_FIELDS {
            if let Some(url) = object
                .get(field)
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && !urls.iter().any(|u| u == url)
            {
                urls.push(url.to_string());
            }
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/webhook")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn pushed(event: Result<Event, PayloadError>) -> Push {
        match event {
            Ok(Event::Push(p)) => p,
            other => panic!("not a push: {other:?}"),
        }
    }

    #[test]
    fn a_github_push_names_its_branch_and_every_repository_url() {
        let p = pushed(parse(
            Provider::GitHub,
            Some("push"),
            &fixture("github-push.json"),
        ));
        assert_eq!(p.branch.as_deref(), Some("production"));
        for url in [
            "https://github.com/example/control.git",
            "git@github.com:example/control.git",
            "https://github.com/example/control",
        ] {
            assert!(
                p.repository_urls.iter().any(|u| u == url),
                "{url} in {:?}",
                p.repository_urls
            );
        }
    }

    #[test]
    fn a_github_ping_is_answered_without_a_push() {
        assert_eq!(
            parse(Provider::GitHub, Some("ping"), &fixture("github-ping.json")),
            Ok(Event::Ping)
        );
    }

    #[test]
    fn a_github_tag_push_is_ignored() {
        let event = parse(
            Provider::GitHub,
            Some("push"),
            &fixture("github-tag-push.json"),
        )
        .unwrap();
        assert!(
            matches!(event, Event::Ignored(ref r) if r.contains("tag")),
            "{event:?}"
        );
    }

    #[test]
    fn other_github_events_are_ignored() {
        let event = parse(Provider::GitHub, Some("issues"), b"{}").unwrap();
        assert!(
            matches!(event, Event::Ignored(ref r) if r.contains("issues")),
            "{event:?}"
        );
    }

    #[test]
    fn a_gitlab_push_names_its_branch_and_the_project_urls() {
        let p = pushed(parse(
            Provider::GitLab,
            Some("Push Hook"),
            &fixture("gitlab-push.json"),
        ));
        assert_eq!(p.branch.as_deref(), Some("feature/new-role"));
        assert!(
            p.repository_urls
                .iter()
                .any(|u| u == "https://gitlab.example.com/puppet/control.git")
        );
        assert!(
            p.repository_urls
                .iter()
                .any(|u| u == "git@gitlab.example.com:puppet/control.git")
        );
    }

    #[test]
    fn a_gitlab_tag_push_is_ignored_by_header_or_by_kind() {
        let body = fixture("gitlab-tag-push.json");
        for header in [Some("Tag Push Hook"), None, Some("System Hook")] {
            let event = parse(Provider::GitLab, header, &body).unwrap();
            assert!(matches!(event, Event::Ignored(_)), "{header:?}: {event:?}");
        }
        let event = parse(
            Provider::GitLab,
            Some("Merge Request Hook"),
            b"{\"object_kind\":\"merge_request\"}",
        )
        .unwrap();
        assert!(matches!(event, Event::Ignored(_)), "{event:?}");
    }

    #[test]
    fn a_gitea_or_forgejo_push_reads_like_github() {
        for provider in [Provider::Gitea, Provider::Forgejo] {
            let p = pushed(parse(provider, Some("push"), &fixture("gitea-push.json")));
            assert_eq!(p.branch.as_deref(), Some("staging"));
            assert!(
                p.repository_urls
                    .iter()
                    .any(|u| u == "https://gitea.example.com/puppet/control.git")
            );
            assert!(
                p.repository_urls
                    .iter()
                    .any(|u| u == "ssh://git@gitea.example.com:2222/puppet/control.git")
            );
        }
    }

    #[test]
    fn the_generic_form_without_a_body_checks_every_branch() {
        assert_eq!(
            parse(Provider::Generic, None, b""),
            Ok(Event::Push(Push {
                branch: None,
                repository_urls: vec![]
            }))
        );
        let p = pushed(parse(Provider::Generic, None, b"{}"));
        assert_eq!(p.branch, None);
    }

    #[test]
    fn the_generic_form_with_a_ref_names_the_branch() {
        let p = pushed(parse(
            Provider::Generic,
            None,
            br#"{"ref":"refs/heads/production"}"#,
        ));
        assert_eq!(p.branch.as_deref(), Some("production"));
        assert!(p.repository_urls.is_empty());
    }

    #[test]
    fn bodies_that_are_not_push_payloads_are_bad_requests() {
        assert!(matches!(
            parse(Provider::GitHub, Some("push"), b"not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            parse(Provider::GitHub, Some("push"), b"[1]"),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            parse(Provider::GitHub, Some("push"), b"{}"),
            Err(PayloadError::MissingRef)
        );
        assert_eq!(
            parse(Provider::GitHub, Some("push"), br#"{"ref":"refs/heads/a"}"#),
            Err(PayloadError::MissingRepository)
        );
        assert_eq!(
            parse(
                Provider::GitLab,
                Some("Push Hook"),
                br#"{"object_kind":"push"}"#
            ),
            Err(PayloadError::MissingRef)
        );
    }

    #[test]
    fn refs_that_are_not_branches_are_ignored() {
        for reference in ["refs/notes/commits", "refs/heads/", "HEAD"] {
            let body = serde_json::json!({"ref": reference, "repository": {"clone_url": "https://g/r.git"}});
            let event = parse(Provider::GitHub, Some("push"), body.to_string().as_bytes()).unwrap();
            assert!(matches!(event, Event::Ignored(_)), "{reference}: {event:?}");
        }
    }
}
