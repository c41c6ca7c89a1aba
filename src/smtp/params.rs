//! MAIL FROM parameters (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8) and decimal numbers.

use super::Body;
use super::reply::{self, Reply};

#[derive(Debug, PartialEq, Eq)]
pub(super) struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    pub smtputf8: bool,
}

/// Twenty digits hold every u64; longer numbers are refused before parsing.
const MAX_DIGITS: usize = 20;

/// Parses a decimal number of 1 to 20 digits that fits in u64.
pub(super) fn decimal(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || text.len() > MAX_DIGITS {
        return None;
    }
    text.parse().ok()
}

/// Unknown keywords get 555 (RFC 1869 6); bad values of known ones 501.
pub(super) fn mail_params(text: &str) -> Result<MailParams, Reply> {
    let mut params = MailParams {
        size: None,
        body: Body::SevenBit,
        smtputf8: false,
    };
    let mut seen_body = false;
    for param in text.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (param, None),
        };
        let keyword = keyword.to_ascii_uppercase();
        match (keyword.as_str(), value) {
            ("SIZE", Some(value)) if params.size.is_none() => {
                params.size = Some(decimal(value).ok_or(reply::BAD_PARAM_VALUE)?);
            }
            ("BODY", Some(value)) if !seen_body => {
                params.body = body(value)?;
                seen_body = true;
            }
            ("SMTPUTF8", None) if !params.smtputf8 => params.smtputf8 = true,
            ("SIZE" | "BODY" | "SMTPUTF8", _) => return Err(reply::BAD_PARAM_VALUE),
            _ => return Err(reply::UNKNOWN_PARAM),
        }
    }
    Ok(params)
}

fn body(value: &str) -> Result<Body, Reply> {
    if value.eq_ignore_ascii_case("7BIT") {
        Ok(Body::SevenBit)
    } else if value.eq_ignore_ascii_case("8BITMIME") {
        Ok(Body::EightBitMime)
    } else {
        Err(reply::BAD_PARAM_VALUE)
    }
}
