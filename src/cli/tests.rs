//! Tests of the command line: precedence, defaults, secrets and checks.

use super::*;
use std::time::Duration;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

fn serve_args(v: &[&str]) -> ServeArgs {
    match parse(&args(v)).unwrap().command {
        Command::Serve(a) => *a,
        other => panic!("parsed {other:?} for serve"),
    }
}

/// `index-shards` takes `serve`'s settings from the same sources: flags
/// first, then the config file.
#[test]
fn index_shards_takes_the_settings_of_serve() {
    let file = config_file(
        "index-shards",
        "keyspace = \"from_file\"\nconsistency = \"one\"\n",
    );
    let file = file.display().to_string();
    let parsed = parse(&args(&[
        "hourglass",
        "--config",
        &file,
        "index-shards",
        "--namespace",
        "old",
        "--cassandra",
        "10.0.0.9:9042",
    ]))
    .unwrap();
    let Command::IndexShards(a) = parsed.command else {
        panic!("parsed {:?}", parsed.command)
    };
    assert_eq!(a.namespace, "old");
    assert_eq!(a.serve.keyspace, "from_file");
    assert_eq!(a.serve.consistency.0, scylla::statement::Consistency::One);
    assert_eq!(a.serve.cassandra, ["10.0.0.9:9042"]);
    // The namespace is required.
    assert!(parse(&args(&["hourglass", "index-shards"])).is_err());
}

#[test]
fn flag_defaults_are_the_library_defaults() {
    let a = serve_args(&["hourglass", "serve"]);
    assert_eq!(a.default_budget.0, BudgetConfig::default().default);
    assert_eq!(a.max_budget.0, BudgetConfig::default().max);
    assert_eq!(a.deadline_margin.0, BudgetConfig::default().deadline_margin);
    assert_eq!(a.token_ttl.0, DEFAULT_TOKEN_TTL);
    assert_eq!(a.consistency.0, CassandraConfig::default().consistency);
    assert_eq!(a.metrics_listen.0, Some(DEFAULT_METRICS_LISTEN));
    assert_eq!(a.breaker_cool_down.0, BreakerConfig::default().cool_down);
    assert!(a.token_shard_starts, "tokens carry shard starts by default");
    let off = serve_args(&["hourglass", "serve", "--token-shard-starts", "false"]);
    assert!(!off.token_shard_starts);
}

#[test]
fn parsed_secrets_never_show_in_debug_or_serialized_output() {
    // From a config file, not a variable: tests run in threads of one
    // process, and a password in its environment made the others' Cassandra
    // settings fail ("a Cassandra password needs --cassandra-username").
    let file = config_file("secrets", "cassandra-password = \"debug-secret-42\"\n");
    let a = serve_args(&["hourglass", "serve", "--config", file.to_str().unwrap()]);
    assert_eq!(
        a.cassandra_password.as_ref().map(Secret::expose),
        Some("debug-secret-42")
    );
    let debug = format!("{a:?}");
    assert!(debug.contains("Secret(<hidden>)"), "{debug}");
    assert!(!debug.contains("debug-secret-42"), "{debug}");
    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains("set (hidden)"), "{json}");
    assert!(!json.contains("debug-secret-42"), "{json}");
}

#[test]
fn bad_flags_name_the_problem() {
    let err = parse(&args(&["hourglass", "serve", "--consistency", "most"])).unwrap_err();
    assert!(
        err.to_string().contains("unknown consistency \"most\""),
        "{err}"
    );
    let err = parse(&args(&["hourglass", "serve", "--max-budget", "soon"])).unwrap_err();
    assert!(err.to_string().contains("--max-budget"), "{err}");
    let err = parse(&args(&["hourglass", "serve", "--token-keys=k:x"])).unwrap_err();
    assert!(matches!(err, CliError::SecretOnCommandLine { flag, .. } if flag == "--token-keys"));
}

#[test]
fn engine_settings_out_of_range_name_their_flag() {
    let a = serve_args(&["hourglass", "serve", "--max-storage-page", "15"]);
    let err = a.engine_config().unwrap_err().to_string();
    assert!(err.starts_with("--max-storage-page: "), "{err}");
    assert!(
        err.contains("at least min_storage_page (16), got 15"),
        "{err}"
    );
    let a = serve_args(&["hourglass", "serve", "--max-in-flight", "0"]);
    let err = a.engine_config().unwrap_err().to_string();
    assert!(err.starts_with("--max-in-flight: "), "{err}");
    let a = serve_args(&["hourglass", "serve", "--max-storage-page", "16"]);
    assert_eq!(a.engine_config().unwrap().max_storage_page, 16);
}

#[test]
fn display_forms_parse_back() {
    for s in ["local_quorum", "one", "each_quorum"] {
        assert_eq!(s.parse::<ConsistencyArg>().unwrap().to_string(), s);
    }
    for s in ["off", "127.0.0.1:9464"] {
        assert_eq!(s.parse::<MetricsListen>().unwrap().to_string(), s);
    }
    assert_eq!(
        "250ms".parse::<HumanDuration>().unwrap().to_string(),
        "250ms"
    );
}

#[test]
fn the_config_file_sits_between_variables_and_defaults() {
    let dir = std::env::temp_dir().join(format!("hourglass-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, "max_budget = \"5s\"\nreadahead-buckets = 7\n").unwrap();
    let f = file.to_str().unwrap();
    let a = serve_args(&["hourglass", "--config", f, "serve"]);
    assert_eq!(a.max_budget.0, Duration::from_secs(5));
    assert_eq!(a.readahead_buckets, 7);
    let a = serve_args(&["hourglass", "serve", "--config", f, "--max-budget", "9s"]);
    assert_eq!(a.max_budget.0, Duration::from_secs(9), "the flag wins");
    // A global flag is a key too; `config` is not (it names the file).
    std::fs::write(
        &file,
        "log-format = \"json\"\ntoken-keys = \"k1:0123456789abcdef\"\n",
    )
    .unwrap();
    let cli = parse(&args(&["hourglass", "serve", "--config", f])).unwrap();
    assert_eq!(cli.log_format, LogFormat::Json);
    let cli = parse(&args(&[
        "hourglass",
        "--log-format",
        "text",
        "--config",
        f,
        "serve",
    ]))
    .unwrap();
    assert_eq!(cli.log_format, LogFormat::Text, "the flag wins");
    let shown = check_config(Some(&file)).unwrap();
    assert!(shown.contains("log-format = json\n"), "{shown}");
    std::fs::write(&file, "config = \"other.toml\"\n").unwrap();
    let err = parse(&args(&["hourglass", "serve", "--config", f])).unwrap_err();
    assert!(err.to_string().contains("unknown key \"config\""), "{err}");
    std::fs::write(&file, "max_budgit = \"5s\"\n").unwrap();
    let err = parse(&args(&["hourglass", "serve", "--config", f])).unwrap_err();
    assert!(
        err.to_string().contains("unknown key \"max_budgit\""),
        "{err}"
    );
}

/// A self-signed certificate and its key, PEM files in a directory named
/// after `name` and this process.
fn pem_files(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("hourglass-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&cert, signed.cert.pem()).unwrap();
    std::fs::write(&key, signed.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn tls_files_must_hold_what_their_flag_names() {
    let (cert, key) = pem_files("tls");
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let a = serve_args(&["hourglass", "serve", "--tls-cert", c, "--tls-key", k]);
    assert!(a.tls_config().unwrap().is_some());
    // The two swapped: each is named.
    let a = serve_args(&["hourglass", "serve", "--tls-cert", k, "--tls-key", c]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(
        err.contains("--tls-cert") && err.contains("CERTIFICATE"),
        "{err}"
    );
    let a = serve_args(&["hourglass", "serve", "--tls-cert", c, "--tls-key", c]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(
        err.contains("--tls-key") && err.contains("PRIVATE KEY"),
        "{err}"
    );
    // Blocks of the right kinds that do not parse: refused at start,
    // naming the flags, not at the first connection.
    let block = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
    let bad_key = key.with_file_name("bad-key.pem");
    std::fs::write(&bad_key, block("EC PRIVATE KEY")).unwrap();
    let b = bad_key.to_str().unwrap();
    let a = serve_args(&["hourglass", "serve", "--tls-cert", c, "--tls-key", b]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(
        err.contains("--tls-cert, --tls-key") && err.contains("key"),
        "{err}"
    );
    let bad_cert = cert.with_file_name("bad-cert.pem");
    std::fs::write(&bad_cert, block("CERTIFICATE")).unwrap();
    let b = bad_cert.to_str().unwrap();
    let a = serve_args(&["hourglass", "serve", "--tls-cert", b, "--tls-key", k]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(err.contains("--tls-cert, --tls-key"), "{err}");
}

/// A config file `name` in a directory of this test process, holding `text`.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hourglass-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn tls_settings_pair_up_whatever_their_sources() {
    let (cert, key) = pem_files("pair");
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // A certificate in the file and no key anywhere: refused, not plaintext.
    let keys = "token-keys = \"k1:0123456789abcdef\"\n";
    let file = config_file("tls1", &format!("{keys}tls-cert = {c:?}\n"));
    let a = serve_args(&["hourglass", "serve", "--config", file.to_str().unwrap()]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let err = check_config(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("needs --tls-key"), "{err}");
    // A client CA alone: refused.
    let file = config_file("tls2", &format!("tls-client-ca = {c:?}\n"));
    let a = serve_args(&["hourglass", "serve", "--config", file.to_str().unwrap()]);
    let err = a.tls_config().unwrap_err().to_string();
    assert!(err.contains("--tls-client-ca needs --tls-cert"), "{err}");
    // The key in the file, the certificate as a flag: TLS.
    let file = config_file("tls3", &format!("tls-key = {k:?}\n"));
    let f = file.to_str().unwrap();
    let a = serve_args(&["hourglass", "serve", "--config", f, "--tls-cert", c]);
    assert!(a.tls_config().unwrap().is_some());
}

#[test]
fn secrets_given_twice_are_refused_naming_both_sources() {
    let keys = std::env::temp_dir().join(format!("hourglass-cli-keys-{}", std::process::id()));
    std::fs::write(&keys, "k2:fedcba9876543210fedcba").unwrap();
    let file = config_file(
        "twice",
        &format!(
            "token-keys = \"k1:0123456789abcdef\"\ntoken-keys-file = {:?}\n",
            keys.to_str().unwrap()
        ),
    );
    let a = serve_args(&["hourglass", "serve", "--config", file.to_str().unwrap()]);
    let err = a.key_ring().unwrap_err().to_string();
    assert!(err.contains("given twice"), "{err}");
    assert!(!err.contains("0123456789abcdef"), "{err}");
}

#[test]
fn settings_that_could_never_serve_are_refused_naming_their_flag() {
    let keys = "token-keys = \"k1:0123456789abcdef\"\n";
    for (setting, want) in [
        (
            "health-interval = \"0s\"",
            "--health-interval must be more than 0",
        ),
        ("token-ttl = \"0s\"", "--token-ttl must be more than 0"),
        ("max-budget = \"0s\"", "--max-budget must be more than 0"),
        ("max-scans = 0", "--max-scans must be at least 1"),
        (
            "breaker-failures = 0",
            "--breaker-failures must be at least 1",
        ),
        (
            "default-budget = \"2m\"",
            "--default-budget (2m) is more than --max-budget",
        ),
        (
            "deadline-margin = \"1h\"",
            "--deadline-margin (1h) must be less than --max-budget (30s)",
        ),
        (
            "connect-timeout = \"0s\"",
            "--connect-timeout must be more than 0",
        ),
        (
            "keyspace = \"bad-name!\"",
            "--keyspace \"bad-name!\" must be",
        ),
        ("replication = \"not a map\"", "--replication \"not a map\""),
        (
            "cassandra-tls-ca = \"/nonexistent.pem\"",
            "cannot read --cassandra-tls-ca",
        ),
    ] {
        let file = config_file("never", &format!("{keys}{setting}\n"));
        let err = check_config(Some(&file)).unwrap_err().to_string();
        assert!(err.contains(want), "{setting}: {err}");
    }
}

#[test]
fn config_file_errors_show_neither_secrets_nor_a_key_twice() {
    let file = config_file(
        "syntax",
        "cassandra-username = \"u\"\ncassandra-password = \"TOPSECRET-PW-1\n",
    );
    let err = check_config(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("not valid TOML at line 2"), "{err}");
    assert_eq!(line_and_column("ab\ncdé\n", 7), (2, 4));
    assert_eq!(
        line_and_column("é", 1),
        (1, 2),
        "inside a character: the whole text"
    );
    assert!(!err.contains("TOPSECRET"), "{err}");
    let file = config_file("spellings", "max_budget = \"7s\"\nmax-budget = \"8s\"\n");
    let err = check_config(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("max-budget is given twice"), "{err}");
    // A bad value says so once, without clap's own prefix twice over.
    let file = config_file("value", "max-budget = \"soon\"\n");
    let err = check_config(Some(&file)).unwrap_err().to_string();
    assert!(
        !err.starts_with("error:") && err.contains("--max-budget"),
        "{err}"
    );
}
