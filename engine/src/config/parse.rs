//! Reading a configuration: TOML text or a file, `--set KEY=VALUE` overrides (also
//! `config set` on the control socket), and `config get` (with secrets redacted).

use super::{err, Config, ConfigError};

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {path}: {e}")))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{path}: {}", e.0)))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies `KEY=VALUE` (TOML value; a bare word is taken as a string). `KEY` may be
    /// dotted (`cluster.redis_url`). Validated like [`Config::set`].
    pub fn set_kv(&mut self, kv: &str) -> Result<(), ConfigError> {
        let (key, value) = split_kv(kv)?;
        self.set(key, value)
    }
}

/// Splits `KEY=VALUE`.
pub fn split_kv(kv: &str) -> Result<(&str, &str), ConfigError> {
    match kv.split_once('=') {
        Some((k, v)) => Ok((k.trim(), v.trim())),
        None => err(format!("--set expects KEY=VALUE, got '{kv}'")),
    }
}
impl Config {
    /// Sets one key from its textual value and validates the result.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut next = self.clone();
        next.set_unchecked(key, value)?;
        next.validate()?;
        *self = next;
        Ok(())
    }

    /// Sets one key (type-checked) without checking relations between keys: for the
    /// command line, where `--set auth=token --set token_secret=...` must work in any
    /// order; call [`Config::validate`] once at the end.
    pub fn set_unchecked(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let mut doc = toml::Value::try_from(&*self)
            .map_err(|e| ConfigError(format!("internal: cannot serialize config: {e}")))?;
        let parsed = parse_value(value);
        let mut table = doc.as_table_mut();
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(t) = table else {
                return err(format!("unknown key '{key}'"));
            };
            if i + 1 == parts.len() {
                let Some(old) = t.get(*part) else {
                    return err(format!("unknown key '{key}'"));
                };
                let new = coerce(old, parsed.clone())
                    .ok_or_else(|| ConfigError(format!("invalid value for {key}: '{value}'")))?;
                t.insert((*part).to_string(), new);
                break;
            }
            table = t.get_mut(*part).and_then(|v| v.as_table_mut());
        }
        let cfg: Config = doc
            .try_into()
            .map_err(|e| ConfigError(format!("invalid value for {key}: {e}")))?;
        *self = cfg;
        Ok(())
    }

    /// One key as JSON, or the whole configuration when `key` is `None`.
    pub fn get_json(&self, key: Option<&str>) -> Result<serde_json::Value, ConfigError> {
        let all = serde_json::to_value(self)
            .map_err(|e| ConfigError(format!("internal: cannot serialize config: {e}")))?;
        let Some(key) = key else {
            return Ok(redact(all));
        };
        let mut v = &all;
        for part in key.split('.') {
            v = v
                .get(part)
                .ok_or_else(|| ConfigError(format!("unknown key '{key}'")))?;
        }
        if key == "token_secret" || key == "admin_token" {
            return Ok(serde_json::Value::String(redacted(v)));
        }
        Ok(v.clone())
    }
}

fn parse_value(value: &str) -> toml::Value {
    let doc = format!("v = {value}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.into())),
        Err(_) => toml::Value::String(value.into()),
    }
}

/// Converts `new` to the type of `old` where the conversion is obvious (an integer for a
/// float key, a number written as a string).
fn coerce(old: &toml::Value, new: toml::Value) -> Option<toml::Value> {
    use toml::Value as V;
    match (old, new) {
        (V::Float(_), V::Integer(i)) => Some(V::Float(i as f64)),
        (V::Float(_), V::Float(f)) => Some(V::Float(f)),
        (V::Integer(_), V::Integer(i)) => Some(V::Integer(i)),
        (V::Boolean(_), V::Boolean(b)) => Some(V::Boolean(b)),
        (V::String(_), V::String(s)) => Some(V::String(s)),
        (V::String(_), v @ (V::Integer(_) | V::Float(_) | V::Boolean(_))) => {
            Some(V::String(v.to_string()))
        }
        (V::Array(_), V::Array(a)) => Some(V::Array(a)),
        (V::Array(_), V::String(s)) => Some(V::Array(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| V::String(p.to_string()))
                .collect(),
        )),
        _ => None,
    }
}

fn redacted(v: &serde_json::Value) -> String {
    match v.as_str() {
        Some("") => String::new(),
        _ => "<redacted>".into(),
    }
}

fn redact(mut all: serde_json::Value) -> serde_json::Value {
    for key in ["token_secret", "admin_token"] {
        if let Some(v) = all.get_mut(key) {
            *v = serde_json::Value::String(redacted(v));
        }
    }
    all
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogFormat;

    #[test]
    fn toml_and_set() {
        let mut cfg = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\nheartbeat_secs = 5\nclient_publish = [\"chat.*\"]\n[cluster]\nredis_url = \"redis://x\"\n",
        )
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9000");
        assert_eq!(cfg.heartbeat_secs, 5.0);
        assert_eq!(cfg.cluster.redis_url, "redis://x");
        cfg.set_kv("heartbeat_secs=0.5").unwrap();
        assert_eq!(cfg.heartbeat_secs, 0.5);
        cfg.set_kv("ws_echo=true").unwrap();
        assert!(cfg.ws_echo);
        assert!(cfg.ws_deflate, "on by default");
        cfg.set_kv("ws_deflate=false").unwrap();
        assert!(!cfg.ws_deflate);
        cfg.set_kv("log_level=debug").unwrap();
        assert_eq!(cfg.log_level, "debug");
        cfg.set_kv("log_format=json").unwrap();
        assert_eq!(cfg.log_format, LogFormat::Json);
        cfg.set_kv("trusted_proxies=127.0.0.1,10.0.0.0/8").unwrap();
        assert_eq!(cfg.trusted_proxies, vec!["127.0.0.1", "10.0.0.0/8"]);
        cfg.set_kv("proxy_protocol=true").unwrap();
        cfg.set_kv("client_publish=a.*,b").unwrap();
        assert_eq!(cfg.client_publish, vec!["a.*", "b"]);
        cfg.set_kv("cluster.node_id=n1").unwrap();
        assert_eq!(cfg.cluster.node_id, "n1");
        cfg.set_kv("token_secret=123").unwrap();
        assert_eq!(cfg.token_secret, "123");
    }

    #[test]
    fn bad_input_is_reported() {
        let mut cfg = Config::default();
        assert!(cfg.set_kv("nope=1").unwrap_err().0.contains("unknown key"));
        assert!(cfg.set_kv("history_size=abc").is_err());
        assert!(cfg.set_kv("history_size=0").is_err());
        assert!(cfg.set_kv("heartbeat_secs=-1").is_err());
        assert!(cfg.set_kv("log_level=loud").is_err());
        assert!(cfg.set_kv("log_format=xml").is_err());
        assert!(cfg.set_kv("trusted_proxies=10.0.0.0/40").is_err());
        assert!(
            cfg.set_kv("proxy_protocol=true").is_err(),
            "needs trusted_proxies"
        );
        assert!(cfg.set_kv("noequals").is_err());
        assert!(
            cfg.set_kv("auth=token").is_err(),
            "token auth needs a secret"
        );
        assert!(Config::from_toml("bogus = 1").is_err());
        assert!(Config::from_toml("workers = \"two\"").is_err());
        assert_eq!(cfg, Config::default(), "failed sets change nothing");
    }

    #[test]
    fn get_json_redacts_secrets() {
        let mut cfg = Config::default();
        cfg.set_kv("token_secret=s3cret").unwrap();
        let all = cfg.get_json(None).unwrap();
        assert_eq!(all["token_secret"], "<redacted>");
        assert_eq!(all["admin_token"], "");
        assert_eq!(cfg.get_json(Some("history_size")).unwrap(), 64);
        assert!(cfg.get_json(Some("nope")).is_err());
    }
}
