//! A script that runs as a Redis function (`FCALL`): its library is loaded once per Redis, so
//! the helpers it takes from common.lua and its own functions are defined at load instead of
//! on every call, as a script's are. Where Redis refuses functions (an ACL user without
//! `FCALL` or `FUNCTION LOAD`), it runs as the equivalent script.

use std::sync::atomic::{AtomicBool, Ordering};

use redis::{FromRedisValue, RedisError, Script, ToRedisArgs, Value};

use super::{COMMON, Result, Store, prelude};

/// The lines of common.lua that read the call's arguments when a script starts. A library
/// is loaded with no call under way, so there they only declare, and the function Redis
/// calls runs them, with its own arguments, before the entry point.
const PER_CALL: [&str; 2] = ["local TAG = ARGV[1]", "local EV = TAG .. 'ev:'"];

pub(super) struct Function {
    /// The function's name in Redis: it carries a digest of the library, so two versions of
    /// hush on one Redis (a rolling upgrade) each call their own.
    name: String,
    /// `FUNCTION LOAD` text.
    library: String,
    /// The same code as a script, for a Redis that refuses functions.
    script: Script,
    refused: AtomicBool,
}

impl Function {
    /// `body` defines `local function <entry>(keys, args)`, which takes KEYS and ARGV as a
    /// script would.
    pub(super) fn new(entry: &str, body: &str) -> Function {
        let helpers = prelude(COMMON, body);
        let mut declared = helpers.clone();
        let mut per_call = String::new();
        for line in PER_CALL {
            if let Some((name, value)) = line
                .strip_prefix("local ")
                .and_then(|l| l.split_once(" = "))
                .filter(|_| helpers.lines().any(|l| l == line))
            {
                declared = declared.replacen(line, &format!("local {name}"), 1);
                per_call.push_str(&format!("  {name} = {}\n", value.replace("ARGV", "args")));
            }
        }
        let code = format!("{declared}\n{body}");
        let digest =
            Script::new(&format!("{code}\n{per_call}{entry}")).get_hash()[..16].to_string();
        let name = format!("hush_{entry}_{digest}");
        Function {
            library: format!(
                "#!lua name=hush_{digest}\n{code}\nredis.register_function('{name}', \
                 function(keys, args)\n{per_call}  return {entry}(keys, args)\nend)\n"
            ),
            name,
            script: Script::new(&format!("{helpers}\n{body}\nreturn {entry}(KEYS, ARGV)\n")),
            refused: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub(super) fn library(&self) -> &str {
        &self.library
    }
}

/// `FCALL` of a function that is not loaded here (a new or flushed Redis, a new Cluster node).
fn not_loaded(e: &RedisError) -> bool {
    e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("Function not found"))
}

/// Redis will not run functions for this client: an ACL without the commands.
fn refused(e: &RedisError) -> bool {
    e.code() == Some("NOPERM")
        || (e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("unknown command")))
}

impl Store {
    /// Calls `function` with its keys and arguments, loading its library where it is missing.
    pub(super) async fn run_function<T: FromRedisValue>(
        &self,
        function: &Function,
        keys: impl ToRedisArgs,
        args: impl ToRedisArgs,
    ) -> Result<T> {
        let keys = keys.to_redis_args();
        if !function.refused.load(Ordering::Relaxed) {
            let fcall = super::call_cmd("FCALL", &function.name, &keys, &args);
            let mut conn = self.c();
            let e = match fcall.query_async(&mut conn).await {
                Err(e) if not_loaded(&e) => {
                    // REPLACE: on a Cluster the load goes to every primary, some of which
                    // may have it already.
                    let load: redis::RedisResult<Value> = redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(&function.library)
                        .query_async(&mut conn)
                        .await;
                    match load {
                        Ok(_) => return Ok(fcall.query_async(&mut conn).await?),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
                Ok(v) => return Ok(v),
            };
            if !refused(&e) {
                return Err(e.into());
            }
            if !function.refused.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    function = %function.name,
                    "Redis refuses functions: this one runs as a script, which costs Redis more \
                     per call; allow FCALL and FUNCTION LOAD for hush's user"
                );
            }
        }
        self.run(&function.script, &keys, &args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_declares_what_a_script_reads_from_its_arguments() {
        for line in PER_CALL {
            assert!(
                COMMON.lines().any(|l| l == line),
                "common.lua lost `{line}`"
            );
        }
        let f = Function::new("relay", include_str!("lua/relay_claim.lua"));
        let lib = f.library();
        assert!(lib.starts_with("#!lua name=hush_"), "{}", &lib[..40]);
        // A library is loaded with no call: no line outside a comment reads a call's globals.
        for line in lib.lines().filter(|l| !l.trim_start().starts_with("--")) {
            assert!(!line.contains("ARGV") && !line.contains("KEYS"), "{line}");
        }
        assert!(lib.contains("\nlocal TAG\n") && lib.contains("\nlocal EV\n"));
        assert!(lib.contains(&format!("redis.register_function('{}', ", f.name)));
        // The function Redis calls sets them from its arguments, then enters.
        assert!(lib.ends_with(
            "function(keys, args)\n  TAG = args[1]\n  EV = TAG .. 'ev:'\n  \
             return relay(keys, args)\nend)\n"
        ));
        // Another body is another name: two versions of hush never call each other's.
        let other = Function::new("relay", "local function relay(keys, args) return 1 end");
        assert_ne!(other.name, f.name);
        assert!(f.name.starts_with("hush_relay_"));
    }
}
