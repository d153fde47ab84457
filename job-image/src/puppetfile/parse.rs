//! The Puppetfile syntax of r10k, without evaluating Ruby.
//!
//! Understood: comments, `forge '<url>'`, `moduledir '<dir>'`, and `mod` with
//! - Forge modules: `mod 'author-name'`, `mod 'author/name', '1.2.3'`, `:latest`,
//!   `:version => '1.2.3'`;
//! - git modules: `:git => '<url>'` with one of `:ref`, `:tag`, `:commit`, `:branch`
//!   (`:branch => :control_branch` follows the control repository's branch), optional
//!   `:default_branch`;
//! - `:install_path => '<dir>'` and `:exclude_spec => true|false` for both.
//!
//! Options may be written `:key => value` or `key: value`, arguments may continue on
//! the next line after a comma, and `mod(...)` may use parentheses. Everything else
//! (string interpolation, variables, conditionals, other methods, SVN, tarball and local
//! modules) is an error naming its line: a Puppetfile is never half understood.

use std::collections::BTreeMap;

use super::{ForgeVersion, GitWant, ModuleDecl, ModuleSource, Puppetfile};
use crate::tree::normalize_relative_path;

/// A Puppetfile that cannot be used, with the line (1-based) where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Puppetfile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A string literal.
    Str(String),
    /// `:name`.
    Sym(String),
    /// `name:` (a hash label).
    Label(String),
    /// A bare word.
    Ident(String),
    Arrow,
    Comma,
    Open,
    Close,
    Newline,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' => i += 1,
            '\\' if chars.get(i + 1) == Some(&'\n') => {
                line += 1;
                i += 2;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '\n' => {
                tokens.push(Token {
                    tok: Tok::Newline,
                    line,
                });
                line += 1;
                i += 1;
            }
            ',' => {
                tokens.push(Token {
                    tok: Tok::Comma,
                    line,
                });
                i += 1;
            }
            '(' => {
                tokens.push(Token {
                    tok: Tok::Open,
                    line,
                });
                i += 1;
            }
            ')' => {
                tokens.push(Token {
                    tok: Tok::Close,
                    line,
                });
                i += 1;
            }
            '=' if chars.get(i + 1) == Some(&'>') => {
                tokens.push(Token {
                    tok: Tok::Arrow,
                    line,
                });
                i += 2;
            }
            '\'' | '"' => {
                let start_line = line;
                let (value, next, lines) = read_string(&chars, i, start_line)?;
                tokens.push(Token {
                    tok: Tok::Str(value),
                    line: start_line,
                });
                line += lines;
                i = next;
            }
            ':' => {
                let start = i + 1;
                let mut end = start;
                if chars.get(start).copied().is_some_and(is_ident_start) {
                    end += 1;
                    while end < chars.len() && is_ident_char(chars[end]) {
                        end += 1;
                    }
                    tokens.push(Token {
                        tok: Tok::Sym(chars[start..end].iter().collect()),
                        line,
                    });
                    i = end;
                } else {
                    return err(
                        line,
                        "unsupported syntax after ':' (expected a symbol like :git)",
                    );
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if chars.get(i) == Some(&':') && chars.get(i + 1) != Some(&':') {
                    i += 1;
                    tokens.push(Token {
                        tok: Tok::Label(word),
                        line,
                    });
                } else if matches!(chars.get(i), Some(&'.') | Some(&':')) {
                    return err(
                        line,
                        format!("unsupported Ruby expression starting with `{word}`"),
                    );
                } else {
                    tokens.push(Token {
                        tok: Tok::Ident(word),
                        line,
                    });
                }
            }
            other => {
                return err(
                    line,
                    format!(
                        "unsupported syntax: unexpected character {other:?} (only forge, moduledir and mod are understood)"
                    ),
                );
            }
        }
    }
    tokens.push(Token {
        tok: Tok::Newline,
        line,
    });
    Ok(tokens)
}

/// Reads a quoted string starting at `chars[start]` (the quote). Returns the value, the
/// index after the closing quote, and how many newlines it spanned.
fn read_string(
    chars: &[char],
    start: usize,
    line: usize,
) -> Result<(String, usize, usize), ParseError> {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    let mut lines = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == quote {
            return Ok((value, i + 1, lines));
        }
        if c == '\n' {
            lines += 1;
        }
        if c == '\\' {
            let Some(&next) = chars.get(i + 1) else { break };
            if quote == '\'' {
                // Single quotes only escape the quote and the backslash.
                if next == '\'' || next == '\\' {
                    value.push(next);
                } else {
                    value.push('\\');
                    value.push(next);
                }
            } else {
                match next {
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    '"' | '\\' | '#' => value.push(next),
                    other => {
                        return err(
                            line + lines,
                            format!("unsupported escape \\{other} in a double-quoted string"),
                        );
                    }
                }
            }
            if next == '\n' {
                lines += 1;
            }
            i += 2;
            continue;
        }
        if quote == '"' && c == '#' && matches!(chars.get(i + 1), Some('{') | Some('@') | Some('$'))
        {
            return err(
                line + lines,
                "string interpolation (#{...}) is not supported",
            );
        }
        value.push(c);
        i += 1;
    }
    err(line, "string is not closed")
}

/// Groups tokens into statements: a newline ends a statement unless it follows a comma
/// or `=>`, or sits inside parentheses.
fn statements(tokens: Vec<Token>) -> Result<Vec<Vec<Token>>, ParseError> {
    let mut out = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut depth = 0usize;
    for token in tokens {
        match token.tok {
            Tok::Open => depth += 1,
            Tok::Close => {
                if depth == 0 {
                    return err(token.line, "unbalanced ')'");
                }
                depth -= 1;
            }
            Tok::Newline => {
                let continues = depth > 0
                    || matches!(
                        current.last().map(|t| &t.tok),
                        Some(Tok::Comma) | Some(Tok::Arrow)
                    );
                if !continues && !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                continue;
            }
            _ => {}
        }
        current.push(token);
    }
    if depth > 0 {
        let line = current.first().map_or(1, |t| t.line);
        return err(line, "'(' is not closed");
    }
    if !current.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// An argument of `mod`, `forge` or `moduledir`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Sym(String),
    Bool(bool),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::Str(s) => format!("{s:?}"),
            Value::Sym(s) => format!(":{s}"),
            Value::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Args {
    positional: Vec<Value>,
    options: Vec<(String, Value)>,
}

fn parse_value(token: &Token) -> Result<Value, ParseError> {
    match &token.tok {
        Tok::Str(s) => Ok(Value::Str(s.clone())),
        Tok::Sym(s) => Ok(Value::Sym(s.clone())),
        Tok::Ident(w) if w == "true" => Ok(Value::Bool(true)),
        Tok::Ident(w) if w == "false" => Ok(Value::Bool(false)),
        Tok::Ident(w) => err(
            token.line,
            format!("unsupported value `{w}` (variables and method calls are not supported)"),
        ),
        other => err(
            token.line,
            format!("expected a value, found {}", describe_tok(other)),
        ),
    }
}

fn describe_tok(tok: &Tok) -> String {
    match tok {
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Sym(s) => format!(":{s}"),
        Tok::Label(s) => format!("{s}:"),
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Arrow => "'=>'".into(),
        Tok::Comma => "','".into(),
        Tok::Open => "'('".into(),
        Tok::Close => "')'".into(),
        Tok::Newline => "end of line".into(),
    }
}

/// Parses the arguments after a keyword: an optional `(`…`)` around a comma-separated
/// list of values and `key => value` / `key: value` pairs.
fn parse_args(tokens: &[Token], keyword_line: usize) -> Result<Args, ParseError> {
    let mut tokens = tokens;
    if let Some(first) = tokens.first()
        && first.tok == Tok::Open
    {
        match tokens.last() {
            Some(last) if last.tok == Tok::Close && tokens.len() >= 2 => {
                tokens = &tokens[1..tokens.len() - 1]
            }
            _ => return err(first.line, "unsupported syntax after ')'"),
        }
    }
    let mut args = Args::default();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        let line = token.line;
        match &token.tok {
            Tok::Label(key) => {
                let Some(value_token) = tokens.get(i + 1) else {
                    return err(line, format!("option {key}: has no value"));
                };
                args.options.push((key.clone(), parse_value(value_token)?));
                i += 2;
            }
            Tok::Sym(key) if tokens.get(i + 1).is_some_and(|t| t.tok == Tok::Arrow) => {
                let Some(value_token) = tokens.get(i + 2) else {
                    return err(line, format!("option :{key} has no value"));
                };
                args.options.push((key.clone(), parse_value(value_token)?));
                i += 3;
            }
            Tok::Str(key) if tokens.get(i + 1).is_some_and(|t| t.tok == Tok::Arrow) => {
                return err(
                    line,
                    format!("string option keys ({key:?} =>) are not supported; write :{key} =>"),
                );
            }
            _ => {
                if !args.options.is_empty() {
                    return err(line, "positional argument after options");
                }
                args.positional.push(parse_value(token)?);
                i += 1;
            }
        }
        match tokens.get(i) {
            None => {}
            Some(t) if t.tok == Tok::Comma => {
                i += 1;
                if i == tokens.len() {
                    return err(t.line, "trailing ',' with nothing after it");
                }
            }
            Some(t) => {
                return err(
                    t.line,
                    format!(
                        "expected ',' or end of line, found {}",
                        describe_tok(&t.tok)
                    ),
                );
            }
        }
    }
    let _ = keyword_line;
    Ok(args)
}

const UNSUPPORTED_OPTIONS: &[(&str, &str)] = &[
    ("svn", "SVN modules are not supported"),
    ("rev", "SVN modules are not supported"),
    ("revision", "SVN modules are not supported"),
    (
        "local",
        "local modules (:local => true) are not supported; commit the module to the control repository instead",
    ),
    (
        "type",
        "module types (:type) are not supported; use :git or a Forge module",
    ),
    ("source", "tarball modules (:source) are not supported"),
    ("sha256sum", "tarball modules are not supported"),
    (
        "username",
        "credentials in the Puppetfile are not supported; use the secret of the CodeSource",
    ),
    (
        "password",
        "credentials in the Puppetfile are not supported; use the secret of the CodeSource",
    ),
    (
        "fallback",
        "g10k's :fallback is not supported; use :default_branch",
    ),
    (
        "link",
        "g10k's :link is not supported; use :branch => :control_branch",
    ),
    (
        "ignore_unreachable",
        "g10k's :ignore_unreachable is not supported",
    ),
    (
        "use_ssh_agent",
        "ssh agents are not supported; use the secret of the CodeSource",
    ),
];

/// The bytes of a Puppetfile as text, or why not: the line and column (both from 1, the
/// column in bytes) of the first byte that is not UTF-8.
pub fn puppetfile_text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        format!("Puppetfile line {line}, column {column}: not UTF-8")
    })
}

/// Parses a Puppetfile. `text` must be the whole file.
pub fn parse_puppetfile(text: &str) -> Result<Puppetfile, ParseError> {
    let mut forge = None;
    let mut moduledir: Option<(String, usize)> = None;
    let mut modules: Vec<ModuleDecl> = Vec::new();
    let mut paths: BTreeMap<String, usize> = BTreeMap::new();
    for statement in statements(tokenize(text)?)? {
        let Some((head, rest)) = statement.split_first() else {
            continue;
        };
        let line = head.line;
        let keyword = match &head.tok {
            Tok::Ident(word) => word.as_str(),
            other => {
                return err(
                    line,
                    format!(
                        "expected forge, moduledir or mod, found {}",
                        describe_tok(other)
                    ),
                );
            }
        };
        match keyword {
            "forge" => {
                let url = single_string(rest, line, "forge")?;
                if forge.is_some() {
                    return err(line, "forge is given twice");
                }
                forge = Some(url);
            }
            "moduledir" => {
                let dir = single_string(rest, line, "moduledir")?;
                if let Some((_, first)) = &moduledir {
                    return err(
                        line,
                        format!("moduledir is given twice (first on line {first})"),
                    );
                }
                if let Some(first_mod) = modules.first() {
                    return err(
                        line,
                        format!(
                            "moduledir must come before the first mod (line {})",
                            first_mod.line
                        ),
                    );
                }
                let dir = normalize_relative_path(&dir).map_err(|e| ParseError {
                    line,
                    message: format!("moduledir {dir:?}: {e}"),
                })?;
                moduledir = Some((dir, line));
            }
            "mod" => {
                let args = parse_args(rest, line)?;
                let moduledir = moduledir.as_ref().map_or("modules", |(d, _)| d.as_str());
                let decl = module_decl(args, line, moduledir)?;
                if let Some(first) = paths.insert(decl.path.clone(), line) {
                    return err(
                        line,
                        format!(
                            "module {:?} is declared twice (lines {first} and {line}) for path {:?}",
                            decl.name, decl.path
                        ),
                    );
                }
                modules.push(decl);
            }
            other => {
                return err(
                    line,
                    format!(
                        "unsupported Puppetfile syntax `{other}` (only forge, moduledir and mod are understood)"
                    ),
                );
            }
        }
    }
    Ok(Puppetfile {
        forge,
        moduledir: moduledir.map_or_else(|| "modules".to_owned(), |(d, _)| d),
        modules,
    })
}

fn single_string(rest: &[Token], line: usize, keyword: &str) -> Result<String, ParseError> {
    let args = parse_args(rest, line)?;
    match (args.positional.as_slice(), args.options.is_empty()) {
        ([Value::Str(s)], true) if !s.is_empty() => Ok(s.clone()),
        _ => err(
            line,
            format!("{keyword} takes exactly one non-empty string"),
        ),
    }
}

fn valid_module_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Splits `author-name` / `author/name` (or a bare `name`) into its parts.
fn split_title(title: &str) -> (Option<&str>, &str) {
    match title.rfind(['-', '/']) {
        Some(i) => (Some(&title[..i]), &title[i + 1..]),
        None => (None, title),
    }
}

fn module_decl(args: Args, line: usize, moduledir: &str) -> Result<ModuleDecl, ParseError> {
    let mut positional = args.positional.into_iter();
    let title = match positional.next() {
        Some(Value::Str(t)) if !t.is_empty() => t,
        Some(other) => {
            return err(
                line,
                format!(
                    "mod needs the module name as a string, found {}",
                    other.describe()
                ),
            );
        }
        None => return err(line, "mod needs the module name"),
    };
    let version_arg = positional.next();
    if let Some(extra) = positional.next() {
        return err(
            line,
            format!(
                "mod {title:?}: unexpected extra argument {}",
                extra.describe()
            ),
        );
    }

    let mut git = None;
    let mut wants: Vec<(&'static str, GitWant)> = Vec::new();
    let mut default_branch = None;
    let mut install_path = None;
    let mut exclude_spec = true;
    let mut version_opt = None;
    let mut seen = BTreeMap::new();
    for (key, value) in args.options {
        if seen.insert(key.clone(), ()).is_some() {
            return err(line, format!("mod {title:?}: option :{key} is given twice"));
        }
        if let Some((_, why)) = UNSUPPORTED_OPTIONS.iter().find(|(k, _)| *k == key) {
            return err(line, format!("mod {title:?}: option :{key}: {why}"));
        }
        let string = |value: &Value| -> Result<String, ParseError> {
            match value {
                Value::Str(s) if !s.is_empty() => Ok(s.clone()),
                other => err(
                    line,
                    format!(
                        "mod {title:?}: option :{key} needs a non-empty string, found {}",
                        other.describe()
                    ),
                ),
            }
        };
        match key.as_str() {
            "git" => git = Some(string(&value)?),
            "ref" | "branch" => {
                let want = match &value {
                    Value::Sym(s) if s == "control_branch" => GitWant::ControlBranch,
                    _ if key == "ref" => GitWant::Ref(string(&value)?),
                    _ => GitWant::Branch(string(&value)?),
                };
                wants.push((if key == "ref" { "ref" } else { "branch" }, want));
            }
            "tag" => wants.push(("tag", GitWant::Tag(string(&value)?))),
            "commit" => {
                let commit = string(&value)?;
                if commit.len() < 7
                    || commit.len() > 40
                    || !commit.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return err(
                        line,
                        format!(
                            "mod {title:?}: :commit {commit:?} is not a commit id (7 to 40 hex digits)"
                        ),
                    );
                }
                wants.push(("commit", GitWant::Commit(commit.to_ascii_lowercase())));
            }
            "default_branch" => default_branch = Some(string(&value)?),
            "install_path" => {
                let raw = string(&value)?;
                let normalized = normalize_relative_path(&raw).map_err(|e| ParseError {
                    line,
                    message: format!("mod {title:?}: install_path {raw:?}: {e}"),
                })?;
                install_path = Some(normalized);
            }
            "exclude_spec" => match value {
                Value::Bool(b) => exclude_spec = b,
                other => {
                    return err(
                        line,
                        format!(
                            "mod {title:?}: :exclude_spec needs true or false, found {}",
                            other.describe()
                        ),
                    );
                }
            },
            "version" => version_opt = Some(value),
            other => return err(line, format!("mod {title:?}: unknown option :{other}")),
        }
    }

    let (author, name) = split_title(&title);
    if !valid_module_name(name) {
        return err(
            line,
            format!(
                "mod {title:?}: module name {name:?} is not valid (lower-case letters, digits and _, starting with a letter)"
            ),
        );
    }
    let dir = install_path.as_deref().unwrap_or(moduledir);
    let path = if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    };

    let source = if let Some(url) = git {
        if let Some(v) = version_arg {
            return err(
                line,
                format!(
                    "mod {title:?}: a git module takes no positional version ({}); use :ref, :tag, :commit or :branch",
                    v.describe()
                ),
            );
        }
        if let Some(v) = version_opt {
            match v {
                Value::Str(s) if !s.is_empty() => wants.push(("version", GitWant::Ref(s))),
                other => {
                    return err(
                        line,
                        format!(
                            "mod {title:?}: :version needs a string, found {}",
                            other.describe()
                        ),
                    );
                }
            }
        }
        let want = match wants.len() {
            0 => match &default_branch {
                Some(b) => GitWant::Branch(b.clone()),
                None => {
                    return err(
                        line,
                        format!(
                            "mod {title:?}: a git module needs one of :ref, :tag, :commit or :branch"
                        ),
                    );
                }
            },
            1 => wants.remove(0).1,
            _ => {
                let names: Vec<String> = wants.iter().map(|(k, _)| format!(":{k}")).collect();
                return err(
                    line,
                    format!("mod {title:?}: give only one of {}", names.join(", ")),
                );
            }
        };
        ModuleSource::Git {
            url,
            want,
            default_branch,
        }
    } else {
        if let Some((key, _)) = wants.first() {
            return err(
                line,
                format!("mod {title:?}: :{key} needs :git (Forge modules take a version)"),
            );
        }
        if default_branch.is_some() {
            return err(line, format!("mod {title:?}: :default_branch needs :git"));
        }
        let Some(author) =
            author.filter(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric()))
        else {
            return err(
                line,
                format!("mod {title:?}: a Forge module is named author-name or author/name"),
            );
        };
        let version = match (version_arg, version_opt) {
            (Some(_), Some(_)) => {
                return err(line, format!("mod {title:?}: version is given twice"));
            }
            (Some(v), None) | (None, Some(v)) => forge_version(&v, &title, line)?,
            (None, None) => ForgeVersion::Latest,
        };
        ModuleSource::Forge {
            slug: format!("{}-{name}", author.to_ascii_lowercase()),
            version,
        }
    };
    Ok(ModuleDecl {
        file: None,
        line,
        name: name.to_owned(),
        source,
        path,
        exclude_spec,
    })
}

fn forge_version(value: &Value, title: &str, line: usize) -> Result<ForgeVersion, ParseError> {
    match value {
        Value::Sym(s) if s == "latest" => Ok(ForgeVersion::Latest),
        Value::Str(v) if is_semver(v) => Ok(ForgeVersion::Exact(v.clone())),
        Value::Str(v) => err(
            line,
            format!(
                "mod {title:?}: version {v:?} is not an exact version (x.y.z); ranges are not supported"
            ),
        ),
        other => err(
            line,
            format!(
                "mod {title:?}: version must be 'x.y.z' or :latest, found {}",
                other.describe()
            ),
        ),
    }
}

fn is_semver(v: &str) -> bool {
    let (core, rest) = match v.find(['-', '+']) {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && rest
            .chars()
            .skip(1)
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_refused_at_their_line_and_column() {
        let cases: &[(&[u8], Result<&str, &str>)] = &[
            (b"mod 'a'\n", Ok("mod 'a'\n")),
            (b"", Ok("")),
            (b"\xff", Err("Puppetfile line 1, column 1: not UTF-8")),
            (
                b"mod 'caf\xe9'\n",
                Err("Puppetfile line 1, column 9: not UTF-8"),
            ),
            (
                b"forge 'x'\n\nmod 'a',\n  :git => '\xc3'",
                Err("Puppetfile line 4, column 12: not UTF-8"),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                puppetfile_text(bytes).map_err(|e| e.clone()),
                want.map_err(str::to_owned),
                "{bytes:?}"
            );
        }
    }

    fn forge(slug: &str, version: ForgeVersion) -> ModuleSource {
        ModuleSource::Forge {
            slug: slug.into(),
            version,
        }
    }

    fn git(url: &str, want: GitWant) -> ModuleSource {
        ModuleSource::Git {
            url: url.into(),
            want,
            default_branch: None,
        }
    }

    #[test]
    fn a_typical_control_repository_puppetfile_is_understood() {
        let text = r#"
# Puppetfile of the control repository
forge "https://forgeapi.puppet.com"

moduledir 'modules'

mod 'puppetlabs/stdlib', '9.6.0'
mod 'puppetlabs-concat', :latest
mod "puppetlabs-apache"
mod 'puppet-nginx', version: '5.0.0'

mod 'profile',
  :git => 'https://git.example.com/puppet/profile.git',
  :branch => :control_branch,
  :default_branch => 'main'

mod 'role', git: 'git@git.example.com:puppet/role.git', tag: 'v1.2.0'
mod('hiera_tools', :git => 'https://x/y.git', :commit => 'ABCDEF1234567')
mod 'site_facts',
    :git          => 'https://x/facts.git',
    :ref          => 'release/2', # trailing comment
    :install_path => 'site',
    :exclude_spec => false
"#;
        let p = parse_puppetfile(text).unwrap();
        assert_eq!(p.forge.as_deref(), Some("https://forgeapi.puppet.com"));
        assert_eq!(p.moduledir, "modules");
        let got: Vec<(usize, &str, &str, &ModuleSource, bool)> = p
            .modules
            .iter()
            .map(|m| {
                (
                    m.line,
                    m.name.as_str(),
                    m.path.as_str(),
                    &m.source,
                    m.exclude_spec,
                )
            })
            .collect();
        let stdlib = forge("puppetlabs-stdlib", ForgeVersion::Exact("9.6.0".into()));
        let concat = forge("puppetlabs-concat", ForgeVersion::Latest);
        let apache = forge("puppetlabs-apache", ForgeVersion::Latest);
        let nginx = forge("puppet-nginx", ForgeVersion::Exact("5.0.0".into()));
        let profile = ModuleSource::Git {
            url: "https://git.example.com/puppet/profile.git".into(),
            want: GitWant::ControlBranch,
            default_branch: Some("main".into()),
        };
        let role = git(
            "git@git.example.com:puppet/role.git",
            GitWant::Tag("v1.2.0".into()),
        );
        let hiera = git("https://x/y.git", GitWant::Commit("abcdef1234567".into()));
        let facts = git("https://x/facts.git", GitWant::Ref("release/2".into()));
        assert_eq!(
            got,
            vec![
                (7, "stdlib", "modules/stdlib", &stdlib, true),
                (8, "concat", "modules/concat", &concat, true),
                (9, "apache", "modules/apache", &apache, true),
                (10, "nginx", "modules/nginx", &nginx, true),
                (12, "profile", "modules/profile", &profile, true),
                (17, "role", "modules/role", &role, true),
                (18, "hiera_tools", "modules/hiera_tools", &hiera, true),
                (19, "site_facts", "site/site_facts", &facts, false),
            ]
        );
    }

    #[test]
    fn moduledir_and_defaults() {
        let p = parse_puppetfile("moduledir 'thirdparty/'\nmod 'a-b', '1.0.0'\n").unwrap();
        assert_eq!(p.moduledir, "thirdparty");
        assert_eq!(p.modules[0].path, "thirdparty/b");
        let p = parse_puppetfile("").unwrap();
        assert_eq!(p.moduledir, "modules");
        assert!(p.modules.is_empty());
        assert!(p.forge.is_none());
        let p = parse_puppetfile("mod 'a-b', '1.0.0-rc.1'").unwrap();
        assert_eq!(
            p.modules[0].source,
            forge("a-b", ForgeVersion::Exact("1.0.0-rc.1".into()))
        );
    }

    #[test]
    fn strings_follow_ruby_quoting() {
        let p =
            parse_puppetfile(r#"mod 'x', :git => 'it\'s\\here', :branch => "tab\there""#).unwrap();
        assert_eq!(
            p.modules[0].source,
            git("it's\\here", GitWant::Branch("tab\there".into()))
        );
        let p = parse_puppetfile(r"mod 'x', :git => 'a\b', :ref => 'c'").unwrap();
        assert_eq!(p.modules[0].source, git("a\\b", GitWant::Ref("c".into())));
    }

    #[test]
    fn malformed_puppetfiles_fail_with_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "mod 'a-b', '1.0.0'\nfoo 'bar'",
                2,
                "unsupported Puppetfile syntax `foo`",
            ),
            ("\n\nmod \"x-#{name}\"", 3, "interpolation"),
            (
                "mod 'a-b',\n  '1.0.0',\n  :git => 'u', :ref => 'r'",
                1,
                "no positional version",
            ),
            ("mod 'a-b', '>= 1.0.0'", 1, "not an exact version"),
            ("mod 'a-b', '1.0'", 1, "not an exact version"),
            (
                "mod 'x', :git => 'u'",
                1,
                "needs one of :ref, :tag, :commit or :branch",
            ),
            (
                "mod 'x', :git => 'u', :tag => 'a', :branch => 'b'",
                1,
                "only one of :tag, :branch",
            ),
            ("mod 'x', :svn => 'u'", 1, "SVN"),
            ("mod 'x', :local => true", 1, "local modules"),
            (
                "\nmod 'x', :git => 'u', :ref => 'r', :bogus => 1",
                2,
                "unexpected character '1'",
            ),
            (
                "\nmod 'x', :git => 'u', :ref => 'r', :bogus => nil",
                2,
                "unsupported value `nil`",
            ),
            (
                "mod 'x', :git => 'u', :ref => 'r', :bogus => 'y'",
                1,
                "unknown option :bogus",
            ),
            (
                "mod 'x', :git => 'u', :commit => 'zzzzzzz'",
                1,
                "not a commit id",
            ),
            ("mod 'Bad-Name', '1.0.0'", 1, "Bad-Name"),
            ("mod 'a-Apache', '1.0.0'", 1, "not valid"),
            ("mod 'apache', '1.0.0'", 1, "author-name"),
            (
                "mod 'a-b', '1.0.0'\nmod 'c/b', '2.0.0'",
                2,
                "declared twice (lines 1 and 2)",
            ),
            (
                "mod 'a-b', '1.0.0'\nmoduledir 'x'",
                2,
                "before the first mod",
            ),
            ("moduledir '../outside'", 1, "'..'"),
            ("moduledir '/etc/puppetlabs/code/modules'", 1, "absolute"),
            (
                "mod 'x', :git => 'u', :ref => 'r', :install_path => '../../x'",
                1,
                "'..'",
            ),
            (
                "mod 'a-b', '1.0.0'\n\nmod 'c-d'\n  , '1.0.0'",
                4,
                "expected forge, moduledir or mod",
            ),
            ("mod 'a-b', :tag => 'v1'", 1, ":tag needs :git"),
            ("mod 'a-b', '1.0.0',", 1, "trailing ','"),
            ("mod 'a-b' '1.0.0'", 1, "expected ','"),
            (
                "if true\nmod 'a-b'\nend",
                1,
                "unsupported Puppetfile syntax `if`",
            ),
            ("mod 'a-b', '1.0.0'\nmod 'c-d', \"1.0.0", 2, "not closed"),
            ("mod('a-b', '1.0.0'", 1, "not closed"),
            ("x = 'y'", 1, "unexpected character '='"),
            ("mod 'a-b', :latest, :latest", 1, "extra argument"),
            (
                "mod 'x', :git => 'u', :ref => 'r', :ref => 's'",
                1,
                "given twice",
            ),
            (
                "mod 'x', :git => 'u', :ref => 'r', :exclude_spec => 'no'",
                1,
                "true or false",
            ),
            ("forge 'a'\nforge 'b'", 2, "forge is given twice"),
            ("forge", 1, "forge takes exactly one"),
            ("mod", 1, "needs the module name"),
            (
                "mod 'a-b', '1.0.0'\nFile.read('x')",
                2,
                "unsupported Ruby expression",
            ),
            (
                "mod 'x', :git => 'u', :ref => 'r', 'git' => 'v'",
                1,
                "string option keys",
            ),
            (
                "mod 'x', :git => 'u', :ref => 'r', :type => 'git'",
                1,
                ":type",
            ),
            ("mod 'x', :git => 'u', :ref => 'r', ::Foo", 1, "after ':'"),
        ];
        for (text, line, needle) in cases {
            let e = parse_puppetfile(text).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("Puppetfile line {line}: "))
            );
        }
    }

    #[test]
    fn line_numbers_count_multi_line_strings_and_continuations() {
        let text = "mod 'x',\n  :git => 'u',\n  :ref => 'r'\n\nmod 'a-y', \\\n '1.0.0'\nbad";
        let e = parse_puppetfile(text).unwrap_err();
        assert_eq!(e.line, 7);
    }

    #[test]
    fn default_branch_alone_selects_that_branch() {
        let p = parse_puppetfile("mod 'x', :git => 'u', :default_branch => 'main'").unwrap();
        assert_eq!(
            p.modules[0].source,
            ModuleSource::Git {
                url: "u".into(),
                want: GitWant::Branch("main".into()),
                default_branch: Some("main".into()),
            }
        );
    }

    #[test]
    fn git_module_names_drop_the_author() {
        let p = parse_puppetfile("mod 'puppetlabs-apache', :git => 'u', :ref => 'main'\nmod 'voxpupuli/nginx', :git => 'v', :ref => 'main'").unwrap();
        let names: Vec<&str> = p.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["apache", "nginx"]);
    }
}
