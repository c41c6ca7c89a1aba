//! Paths and mailboxes: RFC 5321 4.1.2 with the UTF-8 extensions of RFC 6531 3.3.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PathError {
    /// The brackets or what follows them are malformed.
    Syntax,
    /// The mailbox inside the brackets is malformed.
    Mailbox,
    /// Non-ASCII in an address of a transaction without SMTPUTF8.
    NeedUtf8,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mailbox<'a> {
    /// "local@domain" as the client wrote it, source route removed.
    pub text: &'a str,
    /// Local-part with quoting removed.
    pub local: String,
    pub domain: &'a str,
    pub literal: bool,
}

/// RFC 5321 4.5.3.1.1; enforced for recipients only, because senders (SRS,
/// VERP) often exceed it.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;

/// Splits "<path> params" into the text inside the brackets and the parameter text.
pub(super) fn split_path(arg: &str) -> Result<(&str, &str), PathError> {
    let inside = arg.strip_prefix('<').ok_or(PathError::Syntax)?;
    let end = closing_bracket(inside).ok_or(PathError::Syntax)?;
    let (path, rest) = inside.split_at_checked(end).ok_or(PathError::Syntax)?;
    let rest = rest.strip_prefix('>').ok_or(PathError::Syntax)?;
    if rest.is_empty() {
        return Ok((path, rest));
    }
    let params = rest.strip_prefix(' ').ok_or(PathError::Syntax)?;
    Ok((path, params.trim_start_matches(' ')))
}

/// Finds the '>' that closes the path; one inside a quoted local-part does not.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parses the inside of a non-null path.
pub(super) fn parse_mailbox(path: &str, utf8: bool) -> Result<Mailbox<'_>, PathError> {
    if !utf8 && !path.is_ascii() {
        return Err(PathError::NeedUtf8);
    }
    let text = strip_route(path)?;
    let (local, domain) = split_at_sign(text).ok_or(PathError::Mailbox)?;
    let local = local_part(local).ok_or(PathError::Mailbox)?;
    let literal = domain.starts_with('[');
    let valid = if literal {
        address_literal(domain)
    } else {
        domain_name(domain)
    };
    if !valid {
        return Err(PathError::Mailbox);
    }
    Ok(Mailbox {
        text,
        local,
        domain,
        literal,
    })
}

/// Local-parts become directory names: refuse anything that could name
/// another directory or confuse tools, even where RFC 5321 allows it.
pub(super) fn safe_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_PART
        && !local.starts_with('.')
        && !local.chars().any(|c| c == '/' || c.is_control())
}

/// RFC 5321 keeps accepting and ignoring source routes ("@a,@b:user@d", appendix C).
fn strip_route(path: &str) -> Result<&str, PathError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path.split_once(':').ok_or(PathError::Mailbox)?;
    let hops_valid = route
        .split(',')
        .all(|hop| hop.strip_prefix('@').is_some_and(domain_name));
    if hops_valid {
        Ok(mailbox)
    } else {
        Err(PathError::Mailbox)
    }
}

/// The '@' after a quoted local-part may follow an '@' inside the quotes.
fn split_at_sign(text: &str) -> Option<(&str, &str)> {
    if !text.starts_with('"') {
        return text.split_once('@');
    }
    let end = closing_quote(text)?;
    let (local, rest) = text.split_at_checked(end + 1)?;
    Some((local, rest.strip_prefix('@')?))
}

/// Index of the quote that closes the quoted string starting at index 0.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// "local@domain" as RFC 5321 4.1.2 writes it: the local-part as a
/// dot-string when it is one, else quoted, with `"` and `\` escaped.
pub fn mailbox_text(local: &str, domain: &str) -> String {
    if local.split('.').all(atom) {
        return format!("{local}@{domain}");
    }
    let mut quoted = String::with_capacity(local.len() + 2);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    format!("{quoted}@{domain}")
}

fn local_part(local: &str) -> Option<String> {
    if local.starts_with('"') {
        unquote(local)
    } else if local.split('.').all(atom) {
        Some(local.to_owned())
    } else {
        None
    }
}

fn atom(atom: &str) -> bool {
    !atom.is_empty() && atom.chars().all(atext)
}

fn atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || utf8_non_ascii(c)
}

fn utf8_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control()
}

/// Quoted-string of RFC 5321 4.1.2, returned without quotes and backslashes.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => chars.next().filter(|c| (' '..='~').contains(c))?,
            '"' => return None,
            c if (' '..='~').contains(&c) || utf8_non_ascii(c) => c,
            _ => return None,
        };
        value.push(c);
    }
    Some(value)
}

fn domain_name(domain: &str) -> bool {
    domain.len() <= MAX_DOMAIN && domain.split('.').all(label)
}

fn label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || utf8_non_ascii(c))
}

fn address_literal(domain: &str) -> bool {
    let Some(inner) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    match inner.split_once(':') {
        Some((tag, addr)) if tag.eq_ignore_ascii_case("IPv6") => addr.parse::<Ipv6Addr>().is_ok(),
        Some((tag, content)) => general_literal(tag, content),
        None => false,
    }
}

fn general_literal(tag: &str, content: &str) -> bool {
    let dcontent = |c: char| ('!'..='Z').contains(&c) || ('^'..='~').contains(&c);
    label(tag) && tag.is_ascii() && !content.is_empty() && content.chars().all(dcontent)
}
