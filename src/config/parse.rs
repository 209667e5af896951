use std::path::Path;

use toml::Value;

use super::keys::unknown_keys;
use super::validate::validate;
use super::{Invalid, PipelineFile, Problem};

/// Reads, expands, checks and validates a pipeline file.
pub fn load(path: &Path) -> Result<PipelineFile, Invalid> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Invalid(vec![Problem::new(path.display().to_string(), format!("cannot read: {e}"))]))?;
    parse_str(&text, &|name| std::env::var(name).ok())
}

/// Parses pipeline text; `env` resolves `${VAR}` (and `${VAR:-default}`) references.
pub fn parse_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<PipelineFile, Invalid> {
    let mut document: Value = toml::from_str(text).map_err(|e| Invalid(vec![Problem::new("(file)", e.to_string())]))?;
    let mut problems = Vec::new();
    expand(&mut document, "", env, &mut problems);
    problems.extend(unknown_keys(&document));
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    let file: PipelineFile =
        document.try_into().map_err(|e: toml::de::Error| Invalid(vec![Problem::new("(file)", e.message().to_string())]))?;
    let problems = validate(&file);
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(Invalid(problems))
    }
}

fn expand(value: &mut Value, path: &str, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<Problem>) {
    match value {
        Value::String(text) => match expand_text(text, env) {
            Ok(expanded) => *text = expanded,
            Err(variable) => problems.push(Problem::new(
                path,
                format!("${{{variable}}} is not set; export {variable}=... or write the value in the file"),
            )),
        },
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{index}]"), env, problems);
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                expand(item, &child, env, problems);
            }
        }
        _ => {}
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. Err names an unset variable.
fn expand_text(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                out.push_str(&rest[start..]);
                return Ok(out);
            };
            let reference = &inner[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            match env(name).filter(|v| !v.is_empty()).or(default.map(str::to_string)) {
                Some(value) => out.push_str(&value),
                None => return Err(name.to_string()),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [pipeline]
        name = "tenantize"
        [source]
        type = "postgres"
        url = "${SOURCE_URL}"
        tables = ["public.users", "public.orders"]
        [target]
        type = "postgres"
        url = "${TARGET_URL}"
        [[transform]]
        type = "attach_column"
        column = "tenant_id"
        value = "${TENANT_ID:-00000000-0000-0000-0000-000000000001}"
    "#;

    fn env(name: &str) -> Option<String> {
        match name {
            "SOURCE_URL" => Some("postgres://a@h/s".into()),
            "TARGET_URL" => Some("postgres://a@h/t".into()),
            _ => None,
        }
    }

    #[test]
    fn parses_and_expands() {
        let file = parse_str(GOOD, &env).unwrap();
        assert_eq!(file.source.url, "postgres://a@h/s");
        assert_eq!(file.slot_name(), "switchyard_tenantize");
        assert_eq!(file.snapshot.parallel, 2);
        match &file.transforms[0] {
            super::super::TransformSection::AttachColumn { value, .. } => {
                assert_eq!(value, "00000000-0000-0000-0000-000000000001")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = GOOD.replace("tables = [", "tabels = [").replace("[target]", "[target]\nchekpoint_schema = \"x\"");
        let text = text.replace("${TARGET_URL}", "${NOT_SET_ANYWHERE}");
        let problems = parse_str(&text, &env).unwrap_err().0;
        let text = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert!(text.contains("source.tabels: unknown key; did you mean \"tables\"?"), "{text}");
        assert!(text.contains("target.chekpoint_schema: unknown key; did you mean \"checkpoint_schema\"?"), "{text}");
        assert!(text.contains("target.url: ${NOT_SET_ANYWHERE} is not set"), "{text}");
        assert_eq!(problems.len(), 3, "{text}");
    }

    #[test]
    fn names_unknown_transform_types() {
        let text = GOOD.replace("\"attach_column\"", "\"atach_column\"");
        let problems = parse_str(&text, &env).unwrap_err().0;
        assert_eq!(problems[0].to_string(), "transform[0].type: unknown transform type \"atach_column\"; did you mean \"attach_column\"?");
    }

    #[test]
    fn parallel_apply_needs_replica_mode_and_a_sane_count() {
        let message = |apply: &str| {
            let problems = parse_str(&format!("{GOOD}\n[apply]\n{apply}\n"), &env).unwrap_err().0;
            problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        };
        assert!(message("parallel = 4\nas_replica = false").contains("apply.parallel: needs apply.as_replica = true"));
        assert!(message("parallel = 0").contains("apply.parallel: must be between 1 and 16"));
        assert!(message("parallel = 17").contains("apply.parallel: must be between 1 and 16"));
        assert_eq!(parse_str(&format!("{GOOD}\n[apply]\nparallel = 4\n"), &env).unwrap().apply.parallel, 4);
        assert_eq!(parse_str(GOOD, &env).unwrap().apply.parallel, 1);
    }

    #[test]
    fn expands_references() {
        assert_eq!(expand_text("a${SOURCE_URL}b$$c", &env).unwrap(), "apostgres://a@h/sb$c");
        assert_eq!(expand_text("${X:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_text("${X}", &env).unwrap_err(), "X");
    }
}
