//! Request validation: opaque ids, public names and encrypted token ids.

use super::ServiceError;

pub(super) fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        code,
        message: message.into(),
    }
}

/// Checks an opaque client id: 1 to 128 characters of `[A-Za-z0-9_.-]`.
pub(super) fn validate_opaque(what: &'static str, value: &str) -> Result<(), ServiceError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_id",
            format!("{what} must be 1 to 128 characters of A-Z a-z 0-9 _ - ."),
        ))
    }
}

/// Checks a public collection or tenant name: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ServiceError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_name",
            format!("{what} must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
        ))
    }
}

pub(super) fn check_ids(
    what: &str,
    ids: &[u32],
    vocab: usize,
    max_len: usize,
    allow_empty: bool,
) -> Result<(), ServiceError> {
    if ids.is_empty() && !allow_empty {
        return Err(invalid("empty_ids", format!("{what} is empty")));
    }
    if ids.len() > max_len {
        return Err(invalid(
            "too_many_ids",
            format!(
                "{what} has {} ids; the model window allows at most {max_len}",
                ids.len()
            ),
        ));
    }
    if ids.iter().any(|&id| id as usize >= vocab) {
        return Err(invalid(
            "id_out_of_vocabulary",
            format!("{what} has an id outside the vocabulary of {vocab} ids"),
        ));
    }
    Ok(())
}
