//! Environment interpolation in configuration text, with Vector's syntax:
//! `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}`
//! (unset), `${VAR:?message}` / `${VAR?message}` (fail), and `$$` for a
//! literal `$`.
//!
//! One difference from Vector: the bare form `$VAR` applies only to
//! upper-case names, so MongoDB operators in pipelines (`$match`, `$in`,
//! `$unset`) need no escaping.
//!
//! Interpolation is textual, before TOML parsing, as in Vector. A value that
//! contains a newline is refused: it could inject TOML keys, and it would
//! shift the line numbers that error messages point at.

use std::{collections::HashMap, sync::LazyLock};

use regex::{Captures, Regex};

static VAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\$|\$([A-Z_][A-Z0-9_]*)\b|\$\{([A-Za-z_][A-Za-z0-9_.]*)(?:(:?-|:?\?)([^}]*))?\}")
        .unwrap()
});

/// A problem found while interpolating, with the 1-based line it is on.
#[derive(Debug, PartialEq, Eq)]
pub struct InterpolationError {
    pub line: usize,
    pub message: String,
}

/// Interpolated text, and the unset variables it replaced by nothing as
/// `(line, name)`: an error on such a line names the variable.
#[derive(Debug, PartialEq, Eq)]
pub struct Interpolated {
    pub text: String,
    pub unset: Vec<(usize, String)>,
}

/// Replaces variables in `input` with values from `vars`.
pub fn interpolate(
    input: &str,
    vars: &HashMap<String, String>,
) -> Result<Interpolated, Vec<InterpolationError>> {
    let mut errors = Vec::new();
    let mut unset = Vec::new();
    let mut out = String::with_capacity(input.len());
    for (index, line) in input.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let replaced = VAR.replace_all(line, |caps: &Captures<'_>| {
            let whole = caps.get(0).unwrap().as_str();
            if whole == "$$" {
                return "$".to_string();
            }
            let name = caps.get(1).or_else(|| caps.get(2)).unwrap().as_str();
            let value = vars.get(name);
            let op = caps.get(3).map(|m| m.as_str());
            let arg = caps.get(4).map(|m| m.as_str()).unwrap_or("");
            // `${A:-${B}}` would match up to the first `}` and leave a
            // stray one: said plainly instead of yielding a broken value.
            if arg.contains("${") {
                errors.push(InterpolationError {
                    line: line_no,
                    message: format!(
                        "`{whole}}}`: a variable inside a default is not supported; set `{name}` to the value, or write the default out"
                    ),
                });
                return String::new();
            }
            let resolved = match op {
                Some(":-") => match value {
                    Some(v) if !v.is_empty() => v.clone(),
                    _ => arg.to_string(),
                },
                Some("-") => value.cloned().unwrap_or_else(|| arg.to_string()),
                Some(":?") | Some("?") => match value {
                    Some(v) if !(op == Some(":?") && v.is_empty()) => v.clone(),
                    _ => {
                        let msg = if arg.is_empty() {
                            format!("environment variable `{name}` is required")
                        } else {
                            format!("environment variable `{name}`: {arg}")
                        };
                        errors.push(InterpolationError {
                            line: line_no,
                            message: msg,
                        });
                        String::new()
                    }
                },
                _ => match value {
                    Some(v) => v.clone(),
                    None => {
                        tracing::warn!(
                            "Unknown environment variable `{name}` on line {line_no}; it is replaced by an empty string."
                        );
                        unset.push((line_no, name.to_string()));
                        String::new()
                    }
                },
            };
            if resolved.contains('\n') || resolved.contains('\r') {
                errors.push(InterpolationError {
                    line: line_no,
                    message: format!(
                        "environment variable `{name}` contains a newline, which is not allowed in configuration values"
                    ),
                });
                return String::new();
            }
            resolved
        });
        out.push_str(&replaced);
    }
    if errors.is_empty() {
        Ok(Interpolated { text: out, unset })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("NL", "x\ny")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms() {
        let v = vars();
        let interpolate =
            |text: &str, v: &HashMap<String, String>| interpolate(text, v).map(|i| i.text);
        assert_eq!(interpolate("x=$A ${A}", &v).unwrap(), "x=alpha alpha");
        assert_eq!(interpolate("${EMPTY:-d} ${EMPTY-d}", &v).unwrap(), "d ");
        assert_eq!(interpolate("${NOPE:-d} ${NOPE-e}", &v).unwrap(), "d e");
        assert_eq!(interpolate("cost $$5 $${A}", &v).unwrap(), "cost $5 ${A}");
        assert_eq!(interpolate("${NOPE}", &v).unwrap(), "");
    }

    #[test]
    fn unset_variables_are_listed_by_line() {
        let out =
            interpolate("a = \"${A}\"\nb = \"${NOPE}\"\nc = \"$MISSING\"\n", &vars()).unwrap();
        assert_eq!(
            out.unset,
            vec![(2, "NOPE".to_string()), (3, "MISSING".to_string())]
        );
    }

    #[test]
    fn a_variable_inside_a_default_is_refused_by_name() {
        let err = interpolate("key = \"${NOPE:-${A}}\"\n", &vars()).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].message.contains("`${NOPE:-${A}}`")
                && err[0].message.contains("inside a default"),
            "{err:?}"
        );
    }

    #[test]
    fn mongodb_operators_are_not_variables() {
        let text = r#"pipeline = '[{"$match": {"operationType": {"$in": ["insert"]}}}]'"#;
        assert_eq!(interpolate(text, &vars()).unwrap().text, text);
    }

    #[test]
    fn required_fails_with_line() {
        let err =
            interpolate("a = 1\nb = \"${NOPE:?set NOPE to the URI}\"\n", &vars()).unwrap_err();
        assert_eq!(
            err,
            vec![InterpolationError {
                line: 2,
                message: "environment variable `NOPE`: set NOPE to the URI".into()
            }]
        );
        assert!(interpolate("${EMPTY:?}", &vars()).is_err());
        assert_eq!(interpolate("${EMPTY?}", &vars()).unwrap().text, "");
    }

    #[test]
    fn newline_values_are_refused() {
        assert!(interpolate("${NL}", &vars()).is_err());
    }
}
