//! Turns a command line into a verb and its argument text.

use super::reply::{self, Reply};

/// A recognised command with its argument, trimmed of surrounding blanks.
/// MAIL and RCPT carry the text after "FROM:" / "TO:".
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    Mail(&'a str),
    Rcpt(&'a str),
    Data(&'a str),
    Bdat(&'a str),
    Rset(&'a str),
    Noop,
    Quit(&'a str),
    Vrfy(&'a str),
    Expn,
    Help,
    StartTls(&'a str),
}

pub(super) fn parse(line: &[u8]) -> Result<Command<'_>, Reply> {
    let line = trim_end(line);
    if line.contains(&0) {
        return Err(reply::NUL_IN_COMMAND);
    }
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (line.get(..space), line.get(space + 1..)),
        None => (Some(line), None),
    };
    let verb = verb.unwrap_or_default();
    let constructor = lookup(verb).ok_or(reply::UNRECOGNIZED)?;
    let arg = std::str::from_utf8(rest.unwrap_or_default()).map_err(|_| reply::BAD_UTF8)?;
    constructor(arg.trim_matches([' ', '\t']))
}

/// Drops blanks and CRs at the end of a command line. `openssl s_client
/// -crlf` turns a typed CRLF into CR CR LF, and other tools leave trailing
/// spaces; Exim and Postfix accept both, and an administrator testing by
/// hand should not get 500/501 for them. Only command lines pass through
/// here: message content keeps its bare-CR rules.
fn trim_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
        .map_or(0, |last| last + 1);
    line.get(..end).unwrap_or_default()
}

type Constructor = fn(&str) -> Result<Command<'_>, Reply>;

fn lookup(verb: &[u8]) -> Option<Constructor> {
    const VERBS: [(&[u8], Constructor); 13] = [
        (b"HELO", |a| Ok(Command::Helo(a))),
        (b"EHLO", |a| Ok(Command::Ehlo(a))),
        (b"MAIL", |a| {
            keyword(a, "FROM:", reply::MAIL_SYNTAX).map(Command::Mail)
        }),
        (b"RCPT", |a| {
            keyword(a, "TO:", reply::RCPT_SYNTAX).map(Command::Rcpt)
        }),
        (b"DATA", |a| Ok(Command::Data(a))),
        (b"BDAT", |a| Ok(Command::Bdat(a))),
        (b"RSET", |a| Ok(Command::Rset(a))),
        (b"NOOP", |_| Ok(Command::Noop)),
        (b"QUIT", |a| Ok(Command::Quit(a))),
        (b"VRFY", |a| Ok(Command::Vrfy(a))),
        (b"EXPN", |_| Ok(Command::Expn)),
        (b"HELP", |_| Ok(Command::Help)),
        (b"STARTTLS", |a| Ok(Command::StartTls(a))),
    ];
    VERBS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(verb))
        .map(|&(_, constructor)| constructor)
}

/// Strips a case-insensitive keyword such as "FROM:"; a space after the colon is
/// tolerated because many clients send one.
fn keyword<'a>(arg: &'a str, keyword: &str, syntax: Reply) -> Result<&'a str, Reply> {
    match arg.get(..keyword.len()) {
        Some(head) if head.eq_ignore_ascii_case(keyword) => Ok(arg
            .get(keyword.len()..)
            .unwrap_or_default()
            .trim_start_matches(' ')),
        _ => Err(syntax),
    }
}
