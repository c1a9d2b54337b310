use super::*;

const GOOD: &str = r#"
gateway_id = "plant1-line3"

[buffer]
path = "buffer.db"
max_bytes = "64MiB"

[[source]]
name = "press1"
kind = "modbus-tcp"
address = "127.0.0.1:502"
poll = "200ms"
tags = [
  { name = "parts_total", register = "holding:100", type = "u32", order = "CDAB" },
  { name = "parts_reject", register = "holding:102", type = "u16" },
  { name = "force_kn", register = "input:10", type = "f32", scale = 0.1 },
  { name = "state", register = "holding:120" },
  { name = "cycle_done", register = "holding:121", type = "bool", bit = 0 },
  { name = "alarm", register = "holding:121", type = "bool", bit = 1 },
  { name = "order", register = "holding:130", type = "string", length = 8 },
  { name = "door", register = "discrete:0" },
]

[[rule]]
kind = "counter"
machine = "press1"
total = "press1.parts_total"
reject = "press1.parts_reject"
order = "press1.order"
interval = "5s"

[[rule]]
kind = "state"
tag = "press1.state"
states = { 0 = "idle", 1 = "running", 2 = "down" }

[[rule]]
kind = "measurement"
characteristic = "press-force"
tag = "press1.force_kn"
trigger = "press1.cycle_done"
lsl = 40.0
usl = 55.0

[[sink]]
name = "erp"
kind = "https"
url = "https://erp.example.com/api/production"
auth = { bearer_env = "ERP_TOKEN" }
routes = ["production.*"]

[[sink]]
name = "qms"
kind = "file"
path = "quality.jsonl"
routes = ["quality.measurement"]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match load("t.toml", text) {
        Ok(config) => config.warnings().problems.clone(),
        Err(report) => report.problems,
    }
}

fn errors(text: &str) -> Vec<String> {
    problems(text)
        .into_iter()
        .filter(Problem::is_error)
        .map(|p| p.message)
        .collect()
}

#[test]
fn a_full_config_loads_into_the_typed_model() {
    let config = load("t.toml", GOOD).unwrap();
    assert!(
        config.warnings().problems.is_empty(),
        "{}",
        config.warnings().render(false)
    );
    let SourceConfig::ModbusTcp(press) = &config.sources[0] else {
        panic!("the first source is modbus-tcp")
    };
    assert_eq!(press.poll, std::time::Duration::from_millis(200));
    assert_eq!(press.tags[0].data_type, DataType::U32);
    assert_eq!(press.tags[0].order, WordOrder::Cdab);
    assert_eq!(
        press.tags[3].data_type,
        DataType::U16,
        "u16 is the default for registers"
    );
    assert_eq!(press.tags[4].data_type, DataType::Bit(0));
    assert_eq!(press.tags[6].data_type, DataType::String(8));
    assert_eq!(
        press.tags[7].data_type,
        DataType::Bool,
        "bool is the default for bits"
    );
    let RuleConfig::Counter(counter) = &config.rules[0] else {
        panic!("counter first")
    };
    assert_eq!(counter.total.as_ref().unwrap().bits, 32);
    assert_eq!(counter.reject.as_ref().unwrap().bits, 16);
    let RuleConfig::State(state) = &config.rules[1] else {
        panic!("state second")
    };
    assert_eq!(
        state.machine, "press1",
        "machine defaults to the tag's source"
    );
    assert_eq!(state.states[&2], "down");
    assert_eq!(config.buffer.max_bytes, 64 << 20);
    assert!(config.sinks[0].accepts("production.count"));
    assert!(!config.sinks[0].accepts("quality.measurement"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("\"press1.parts_reject\"", "\"press1.parts_rejects\"")
        .replace("lsl = 40.0", "lsl = 60.0")
        .replace("https://erp.example.com", "http://erp.example.com");
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].contains("unknown tag `press1.parts_rejects`"));
    assert!(errors[1].contains("usl 55 is not above lsl 60"));
    assert!(errors[2].contains("unencrypted"));
}

#[test]
fn an_unknown_tag_suggests_the_closest_one() {
    let text = GOOD.replace("\"press1.parts_reject\"", "\"press1.parts_rejects\"");
    let problem = problems(&text).into_iter().find(Problem::is_error).unwrap();
    assert_eq!(
        problem.help.as_deref(),
        Some("did you mean \"press1.parts_reject\"?")
    );
}

#[test]
fn overlapping_registers_are_refused_but_distinct_bits_share() {
    let text = GOOD.replace("register = \"holding:102\"", "register = \"holding:101\"");
    assert_eq!(
        errors(&text),
        vec!["tag `parts_reject` overlaps tag `parts_total`".to_owned()]
    );
    let same_bit = GOOD.replace("type = \"bool\", bit = 1", "type = \"bool\", bit = 0");
    assert_eq!(
        errors(&same_bit),
        vec!["tag `alarm` overlaps tag `cycle_done`".to_owned()]
    );
}

#[test]
fn a_type_that_does_not_fit_its_register_is_refused() {
    let text = GOOD.replace(
        "{ name = \"door\", register = \"discrete:0\" }",
        "{ name = \"door\", register = \"coil:0\", type = \"f32\" }",
    );
    assert_eq!(
        errors(&text),
        vec!["tag `door`: a coil holds one bit, not a `f32`".to_owned()]
    );
    let no_bit = GOOD.replace("type = \"bool\", bit = 1", "type = \"bool\"");
    assert_eq!(
        errors(&no_bit),
        vec!["tag `alarm`: a holding register holds 16 bits".to_owned()]
    );
}

#[test]
fn registers_out_of_range_are_refused() {
    let past_end = GOOD.replace("register = \"input:10\"", "register = \"input:65535\"");
    assert_eq!(
        errors(&past_end),
        vec!["tag `force_kn` runs past the last register".to_owned()]
    );
    let too_big = GOOD.replace("register = \"input:10\"", "register = \"input:70000\"");
    assert_eq!(
        errors(&too_big),
        vec!["register address `70000` is out of range".to_owned()]
    );
}

#[test]
fn duplicate_names_are_refused() {
    let text = GOOD.replace("name = \"alarm\"", "name = \"state\"");
    assert_eq!(errors(&text), vec!["two tags are named `state`".to_owned()]);
    let sinks = GOOD.replace("name = \"qms\"", "name = \"erp\"");
    assert_eq!(errors(&sinks), vec!["two sinks are named `erp`".to_owned()]);
}

#[test]
fn inline_secrets_are_refused_without_being_echoed() {
    let rendered = |text: &str| match load("t.toml", text) {
        Ok(_) => panic!("refused"),
        Err(report) => report.render(false),
    };
    let text = GOOD.replace(
        "auth = { bearer_env = \"ERP_TOKEN\" }",
        "auth = { bearer = \"s3cr3t\" }",
    );
    let problem = problems(&text).into_iter().find(Problem::is_error).unwrap();
    assert_eq!(
        problem.message,
        "sink `erp` has a secret written inline in `auth.bearer`"
    );
    // The diagnostic points at the sink, so the rendered source line does not print the secret.
    assert_eq!(&text[problem.span.unwrap()], "\"erp\"");
    assert!(!rendered(&text).contains("s3cr3t"));
    let in_url = GOOD.replace("https://erp.example.com", "https://me:pw@erp.example.com");
    assert_eq!(
        errors(&in_url),
        vec!["a password is written inline in the URL".to_owned()]
    );
    assert!(!rendered(&in_url).contains("me:pw"));
    let ua = UA.replace("password_env = \"UA_PASSWORD\"", "password = \"hunter2\"");
    assert!(!rendered(&ua).contains("hunter2"));
    // Nor as a context line of another problem: the text is masked before rendering.
    let next_to = UA
        .replace("password_env = \"UA_PASSWORD\"\n", "")
        .replace("name = \"ua\"\n", "name = \"ua\"\npassword = \"hunter2\"\n")
        .replace("queue_size = 5", "queue_size = 0");
    let shown = rendered(&next_to);
    assert!(
        shown.contains("password = \"*******\"") && !shown.contains("hunter2"),
        "{shown}"
    );
    let endpoint = UA.replace("opc.tcp://127.0.0.1", "opc.tcp://me:pw1234@127.0.0.1");
    assert!(!rendered(&endpoint).contains("pw1234"));
    // Nor in a message that quotes the URL.
    let scheme = GOOD.replace("https://erp.example.com", "ftp://me:pw1234@erp.example.com");
    let shown = rendered(&scheme);
    assert!(
        shown.contains("ftp://me:******@erp.example.com") && !shown.contains("pw1234"),
        "{shown}"
    );
    // Nor when the file does not parse at all.
    let broken = UA.replace(
        "password_env = \"UA_PASSWORD\"",
        "password = \"hunter2\nbroken = [",
    );
    let shown = rendered(&broken);
    assert!(!shown.contains("hunter2"), "{shown}");
    let unquoted = UA.replace("password_env = \"UA_PASSWORD\"", "password = hunter2");
    assert!(!rendered(&unquoted).contains("hunter2"));
    // An inline client secret or API key beside a typo that stops the table from parsing.
    for (key, secret) in [
        ("client_secret", "cl13nt-s3cr3t"),
        ("api_key", "k3y-s3cr3t"),
    ] {
        let typo = GOOD.replace(
            "auth = { bearer_env = \"ERP_TOKEN\" }",
            &format!("auth = {{ {key} = \"{secret}\", scpoe = \"x\" }}"),
        );
        let shown = rendered(&typo);
        assert!(
            shown.contains("scpoe") && !shown.contains(secret),
            "{shown}"
        );
    }
}

#[test]
fn http_needs_an_explicit_opt_in() {
    let text = GOOD.replace("url = \"https://", "insecure = true\nurl = \"http://");
    assert!(errors(&text).is_empty());
}

#[test]
fn a_route_matching_no_event_type_is_an_error_and_an_unfed_sink_a_warning() {
    let typo = GOOD.replace("[\"production.*\"]", "[\"prodution.*\"]");
    assert_eq!(
        errors(&typo),
        vec!["route `prodution.*` matches no event type".to_owned()]
    );
    let unfed = GOOD.replace("[\"quality.measurement\"]", "[\"telemetry.sample\"]");
    let problems = problems(&unfed);
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].is_error());
    assert_eq!(
        problems[0].message,
        "no rule makes an event routed to sink `qms`"
    );
}

#[test]
fn fields_of_another_kind_are_refused() {
    let text = GOOD.replace(
        "path = \"quality.jsonl\"",
        "path = \"quality.jsonl\"\nurl = \"https://x\"",
    );
    assert_eq!(
        errors(&text),
        vec!["`url` does not apply to a file sink".to_owned()]
    );
}

#[test]
fn syntax_and_unknown_fields_are_located() {
    let text = GOOD.replace("poll = \"200ms\"", "pol = \"200ms\"");
    let report = load("t.toml", &text).unwrap_err();
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0]
            .message
            .starts_with("unknown field `pol`"),
        "{}",
        report.problems[0].message
    );
    assert_eq!(&text[report.problems[0].span.clone().unwrap()], "pol");
    let bad_duration = GOOD.replace("poll = \"200ms\"", "poll = \"fast\"");
    let report = load("t.toml", &bad_duration).unwrap_err();
    assert!(
        report.problems[0]
            .message
            .contains("invalid duration `fast`")
    );
}

#[test]
fn counters_must_be_unscaled_unsigned_integers() {
    let text = GOOD.replace(
        "total = \"press1.parts_total\"",
        "total = \"press1.force_kn\"",
    );
    assert_eq!(
        errors(&text),
        vec!["counter tag `press1.force_kn` is not an unsigned integer".to_owned()]
    );
}

#[test]
fn rendered_diagnostics_name_file_line_column_and_hint() {
    let text = GOOD.replace("\"press1.parts_reject\"", "\"press1.parts_rejects\"");
    let report = load("causeway.toml", &text).unwrap_err();
    let rendered = report.render(false);
    let line = text
        .lines()
        .position(|l| l.contains("parts_rejects"))
        .unwrap()
        + 1;
    assert!(
        rendered.contains(&format!("[causeway.toml:{line}:10]")),
        "{rendered}"
    );
    assert!(
        rendered.contains("reject = \"press1.parts_rejects\""),
        "{rendered}"
    );
    assert!(rendered.contains("no such tag"), "{rendered}");
    assert!(
        rendered.contains("help: did you mean \"press1.parts_reject\"?"),
        "{rendered}"
    );
}

#[test]
fn route_patterns_match_like_globs() {
    assert!(route_matches("*", "quality.reject"));
    assert!(route_matches("production.*", "production.count"));
    assert!(!route_matches("production.*", "quality.reject"));
    assert!(route_matches("*.count", "production.count"));
    assert!(route_matches("quality.measurement", "quality.measurement"));
    assert!(!route_matches("quality", "quality.measurement"));
}

#[test]
fn durations_and_sizes_are_bounded_with_the_range_in_the_message() {
    // Before: this passed `check`, then `run` aborted adding it to the clock.
    let huge = GOOD.replace("interval = \"5s\"", "interval = \"300000000000y\"");
    let problem = problems(&huge).into_iter().find(Problem::is_error);
    let problem = problem.expect("an absurd interval is refused");
    assert_eq!(
        problem.message,
        "interval = \"300000000000years\" is too long"
    );
    assert_eq!(problem.label, "at most 1day");
    assert_eq!(&huge[problem.span.unwrap()], "\"300000000000y\"");
    let long_poll = GOOD.replace("poll = \"200ms\"", "poll = \"2h\"");
    assert_eq!(
        errors(&long_poll),
        vec!["poll = \"2h\" is too long".to_owned()]
    );
    let grace = format!("shutdown_grace = \"10d\"\n{GOOD}");
    assert_eq!(
        errors(&grace),
        vec!["shutdown_grace = \"10days\" is too long".to_owned()]
    );
    let big = GOOD.replace("max_bytes = \"64MiB\"", "max_bytes = \"2048GiB\"");
    assert_eq!(
        errors(&big),
        vec!["max_bytes = 2048GiB is too large".to_owned()]
    );
    let dead = GOOD.replace(
        "max_bytes = \"64MiB\"",
        "max_bytes = \"64MiB\"\nmax_dead_bytes = \"1KiB\"\nmax_age = \"10s\"",
    );
    assert_eq!(
        errors(&dead),
        vec![
            "max_dead_bytes = 1KiB is too small".to_owned(),
            "max_age = \"10s\" is too short".to_owned()
        ]
    );
    let batch = GOOD.replace(
        "routes = [\"quality.measurement\"]",
        "routes = [\"quality.measurement\"]\nmax_batch_bytes = \"1GiB\"",
    );
    assert_eq!(
        errors(&batch),
        vec!["max_batch_bytes = 1GiB is too large".to_owned()]
    );
}

#[test]
fn urls_are_parsed_by_check() {
    // Before: accepted, then retried forever at run time.
    let port = GOOD.replace("erp.example.com/", "erp.example.com:99999/");
    let errors_found = errors(&port);
    assert_eq!(errors_found.len(), 1, "{errors_found:?}");
    assert!(
        errors_found[0].starts_with("`https://erp.example.com:99999/api/production` is not a valid URL (invalid port number)"),
        "{errors_found:?}"
    );
    let scheme = GOOD.replace("url = \"https://", "url = \"ftp://");
    assert_eq!(
        errors(&scheme),
        vec![
            "`ftp://erp.example.com/api/production` is not an http(s) URL (scheme `ftp`)"
                .to_owned()
        ]
    );
    let spaces = GOOD.replace("erp.example.com/", "erp example.com/");
    assert_eq!(errors(&spaces).len(), 1);
}

#[test]
fn buffer_limits_and_policies_load_into_the_model() {
    let text = GOOD.replace(
        "max_bytes = \"64MiB\"",
        "max_bytes = \"64MiB\"\nmax_dead_bytes = \"8MiB\"\nmax_age = \"7d\"\nwhen_full = \"block_sources\"",
    );
    let config = load("t.toml", &text).unwrap();
    assert_eq!(config.buffer.max_dead_bytes, 8 << 20);
    assert_eq!(
        config.buffer.max_age,
        Some(std::time::Duration::from_secs(7 * 86_400))
    );
    assert_eq!(config.buffer.when_full, WhenFull::BlockSources);
    assert_eq!(
        config.sinks[0].max_batch_bytes,
        1 << 20,
        "the default is 1 MiB"
    );
    let typo = GOOD.replace(
        "max_bytes = \"64MiB\"",
        "max_bytes = \"64MiB\"\nwhen_full = \"drop-oldest\"",
    );
    let problem = problems(&typo).into_iter().find(Problem::is_error).unwrap();
    assert_eq!(problem.message, "unknown when_full policy `drop-oldest`");
    assert!(
        problem
            .help
            .unwrap()
            .starts_with("did you mean \"drop_oldest\"?")
    );
}

#[test]
fn counter_max_rate_and_measurement_deadband_are_checked() {
    let rate = GOOD.replace("interval = \"5s\"", "interval = \"5s\"\nmax_rate = 50.0");
    let config = load("t.toml", &rate).unwrap();
    let RuleConfig::Counter(counter) = &config.rules[0] else {
        panic!()
    };
    assert_eq!(counter.max_rate, 50.0);
    let zero = GOOD.replace("interval = \"5s\"", "interval = \"5s\"\nmax_rate = 0.0");
    assert_eq!(
        errors(&zero),
        vec!["max_rate = 0 is out of range".to_owned()]
    );
    let on_state = GOOD.replace("states = {", "max_rate = 5.0\nstates = {");
    assert_eq!(
        errors(&on_state),
        vec!["`max_rate` does not apply to a state rule".to_owned()]
    );

    let untriggered = GOOD.replace("trigger = \"press1.cycle_done\"\n", "");
    for (written, expected) in [
        ("0.5", Deadband::Absolute(0.5)),
        ("2", Deadband::Absolute(2.0)),
        ("\"2.5%\"", Deadband::Percent(2.5)),
    ] {
        let text = untriggered.replace("lsl = 40.0", &format!("lsl = 40.0\ndeadband = {written}"));
        let config = load("t.toml", &text).unwrap();
        let RuleConfig::Measurement(m) = &config.rules[2] else {
            panic!()
        };
        assert_eq!(m.deadband, Some(expected), "{written}");
    }
    for bad in ["0", "-1.0", "\"abc\"", "\"0%\"", "\"150%\""] {
        let text = untriggered.replace("lsl = 40.0", &format!("lsl = 40.0\ndeadband = {bad}"));
        assert_eq!(
            errors(&text),
            vec!["this deadband is not usable".to_owned()],
            "{bad}"
        );
    }
    let with_trigger = GOOD.replace("lsl = 40.0", "lsl = 40.0\ndeadband = 0.5");
    assert_eq!(
        errors(&with_trigger),
        vec!["`deadband` does not apply with a `trigger`".to_owned()]
    );
    assert!(Deadband::Absolute(0.5).exceeded(10.0, 10.5));
    assert!(!Deadband::Absolute(0.5).exceeded(10.0, 10.4));
    assert!(Deadband::Percent(10.0).exceeded(-50.0, -44.0));
    assert!(!Deadband::Percent(10.0).exceeded(-50.0, -46.0));
}

/// Each replacement in GOOD makes exactly the one error named, at the text named.
#[test]
fn every_remaining_check_reports_its_one_error_at_its_place() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, the one error, the text it points at)
        (
            "kind = \"state\"\ntag",
            "kind = \"state\"\nname = \"counter-press1\"\ntag",
            "two rules are named `counter-press1`",
            "\"counter-press1\"",
        ),
        (
            "max_bytes = \"64MiB\"",
            "max_bytes = \"512KiB\"",
            "max_bytes = 512KiB is too small",
            "\"512KiB\"",
        ),
        (
            "max_bytes = \"64MiB\"",
            "max_bytes = \"64MiB\"\nmax_batch = 0",
            "max_batch = 0 is out of range",
            "0",
        ),
        (
            "max_bytes = \"64MiB\"",
            "max_bytes = \"64MiB\"\nmax_batch = 100001",
            "max_batch = 100001 is out of range",
            "100001",
        ),
        (
            "poll = \"200ms\"",
            "poll = \"200ms\"\nunit = 256",
            "unit 256 is out of range",
            "256",
        ),
        (
            "poll = \"200ms\"",
            "poll = \"5ms\"",
            "poll = \"5ms\" is too short",
            "\"5ms\"",
        ),
        (
            "poll = \"200ms\"",
            "poll = \"200ms\"\nmax_gap = 125",
            "max_gap = 125 is out of range",
            "125",
        ),
        (
            "poll = \"200ms\"",
            "poll = \"200ms\"\nmax_gap = -1",
            "max_gap = -1 is out of range",
            "-1",
        ),
        (
            "usl = 55.0",
            "usl = 55.0\nnominal = 60.0",
            "nominal 60 lies outside the specification limits",
            "60.0",
        ),
        (
            "trigger = \"press1.cycle_done\"",
            "trigger = \"press1.state\"",
            "trigger tag `press1.state` is not a bool",
            "\"press1.state\"",
        ),
        (
            "reject = \"press1.parts_reject\"",
            "reject = \"press1.parts_reject\"\ngood = \"press1.parts_reject\"",
            "a counter rule takes two of `total`, `good` and `reject`",
            "\"press1.parts_reject\"",
        ),
        (
            "type = \"u32\", order = \"CDAB\" }",
            "type = \"u32\", order = \"CDAB\", scale = 2.0 }",
            "counter tag `press1.parts_total` is scaled",
            "\"press1.parts_total\"",
        ),
    ];
    for (from, to, message, at) in cases {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let found: Vec<Problem> = problems(&text)
            .into_iter()
            .filter(Problem::is_error)
            .collect();
        assert_eq!(
            found.iter().map(|p| p.message.as_str()).collect::<Vec<_>>(),
            vec![*message],
            "{to}"
        );
        let span = found[0].span.clone().expect("located");
        assert_eq!(&text[span], *at, "{message}");
    }
}

#[test]
fn a_field_of_another_kind_names_the_kinds_it_belongs_to() {
    let text = GOOD.replace(
        "interval = \"5s\"",
        "interval = \"5s\"\ntrigger = \"press1.cycle_done\"",
    );
    let problem = problems(&text).into_iter().find(Problem::is_error).unwrap();
    assert_eq!(
        problem.message,
        "`trigger` does not apply to a counter rule"
    );
    assert_eq!(&text[problem.span.unwrap()], "\"press1.cycle_done\"");
    assert_eq!(
        problem.help.as_deref(),
        Some("`trigger` belongs to a measurement rule; remove it, or check the rule's `kind`")
    );
    let line = GOOD.replace("usl = 55.0", "usl = 55.0\nline = \"l3\"");
    let problem = problems(&line).into_iter().find(Problem::is_error).unwrap();
    assert_eq!(
        problem.message,
        "`line` does not apply to a measurement rule"
    );
    assert!(
        problem
            .help
            .unwrap()
            .starts_with("`line` belongs to a counter or state rule")
    );
    let stdout = GOOD.replace(
        "kind = \"file\"\npath = \"quality.jsonl\"",
        "kind = \"stdout\"\npath = \"quality.jsonl\"",
    );
    assert_eq!(
        errors(&stdout),
        vec!["`path` does not apply to a stdout sink".to_owned()]
    );
}

const UA: &str = r#"
gateway_id = "plant1"

[[source]]
name = "ua"
kind = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/causeway"
security_policy = "Basic256Sha256"
username = "operator"
password_env = "UA_PASSWORD"
publishing_interval = "200ms"
queue_size = 5
tags = [
  { name = "parts", node = "ns=2;s=Press.Parts", type = "u32" },
  { name = "force", node = "ns=2;i=1001", deadband = "2%" },
  { name = "state", node = "ns=3;g=72962b91-fa75-4ae6-8d28-b404dc7daf63" },
  { name = "done", node = "ns=1;b=AAEC/w==", type = "bool" },
]

[[rule]]
kind = "counter"
machine = "press1"
total = "ua.parts"

[[rule]]
kind = "measurement"
characteristic = "press-force"
tag = "ua.force"
trigger = "ua.done"
lsl = 40.0

[[rule]]
kind = "state"
tag = "ua.state"
states = { 0 = "idle", 1 = "running" }

[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;

#[test]
fn an_opcua_source_loads_with_secure_defaults() {
    let config = load("t.toml", UA).unwrap();
    let SourceConfig::OpcUa(ua) = &config.config().sources[0] else {
        panic!("an opcua source")
    };
    assert_eq!(ua.endpoint, "opc.tcp://127.0.0.1:4840/causeway");
    assert_eq!(ua.policy, UaPolicy::Basic256Sha256);
    // A policy without a mode signs and encrypts: never the weaker Sign by default.
    assert_eq!(ua.mode, UaMode::SignAndEncrypt);
    assert_eq!(
        ua.identity,
        UaIdentity::UserName {
            user: "operator".into(),
            password: Secret::Env("UA_PASSWORD".into())
        }
    );
    assert_eq!(
        ua.reading,
        UaReading::Subscribe {
            publishing: std::time::Duration::from_millis(200),
            sampling: std::time::Duration::from_millis(200),
            queue_size: 5
        }
    );
    assert_eq!(ua.tags[0].node.to_string(), "ns=2;s=Press.Parts");
    assert_eq!(ua.tags[0].data_type, Some(UaType::U32));
    assert_eq!(ua.tags[1].node.identifier, UaIdentifier::Numeric(1001));
    assert_eq!(ua.tags[1].deadband, Some(Deadband::Percent(2.0)));
    assert_eq!(
        ua.tags[2].node.to_string(),
        "ns=3;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"
    );
    assert_eq!(
        ua.tags[3].node.identifier,
        UaIdentifier::Opaque(vec![0, 1, 2, 255])
    );
    assert_eq!(ua.tags[3].node.to_string(), "ns=1;b=AAEC/w==");
}

#[test]
fn opcua_mistakes_are_named_where_they_are() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "password_env = \"UA_PASSWORD\"",
            "password = \"hunter2\"",
            "has a password written inline",
        ),
        (
            "security_policy = \"Basic256Sha256\"",
            "security_policy = \"Basic256Sha265\"",
            "unknown security policy `Basic256Sha265`",
        ),
        (
            "security_policy = \"Basic256Sha256\"",
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"None\"",
            "security mode None cannot go with policy Basic256Sha256",
        ),
        (
            "security_policy = \"Basic256Sha256\"",
            "security_mode = \"Sign\"",
            "security mode Sign needs a security policy",
        ),
        (
            "opc.tcp://127.0.0.1:4840/causeway",
            "http://127.0.0.1:4840",
            "is not an opc.tcp:// endpoint",
        ),
        (
            "opc.tcp://127.0.0.1:4840/causeway",
            "opc.tcp://127.0.0.1:99999",
            "has no usable host and port",
        ),
        (
            "node = \"ns=2;i=1001\"",
            "node = \"ns=2;x=1001\"",
            "is not an OPC UA node id",
        ),
        (
            "node = \"ns=2;i=1001\"",
            "register = \"holding:1\"",
            "`register` does not apply to a opcua tag",
        ),
        (
            "{ name = \"parts\", node = \"ns=2;s=Press.Parts\", type = \"u32\" }",
            "{ name = \"parts\", node = \"ns=2;s=Press.Parts\" }",
            "counter tag `ua.parts` has no declared type",
        ),
        (
            "publishing_interval = \"200ms\"",
            "mode = \"poll\"\npublishing_interval = \"200ms\"",
            "`publishing_interval` applies to subscriptions",
        ),
        (
            "queue_size = 5",
            "queue_size = 0",
            "queue_size = 0 is out of range",
        ),
        (
            "password_env = \"UA_PASSWORD\"",
            "user_key = \"k.pem\"",
            "a user name and a user certificate are both given",
        ),
        (
            "type = \"bool\"",
            "type = \"boolean\"",
            "unknown type `boolean`",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(UA.contains(from), "{from}");
        let errors = errors(&UA.replacen(from, to, 1));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
    }
}

#[test]
fn a_modbus_field_on_an_opcua_source_names_its_kind() {
    let text = UA.replace("queue_size = 5", "address = \"10.0.0.1:502\"");
    let problems = problems(&text);
    let p = problems
        .iter()
        .find(|p| p.message.contains("`address` does not apply"))
        .expect("an error for `address`");
    assert!(
        p.help.as_deref().unwrap_or("").contains("modbus-tcp"),
        "{p:?}"
    );
}

proptest::proptest! {
    #[test]
    fn node_ids_print_as_they_parse(
        ns in 0u16..=u16::MAX,
        kind in 0..4,
        n in proptest::prelude::any::<u32>(),
        s in "[A-Za-z0-9_.;=/ -]{1,40}",
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..40),
    ) {
        let identifier = match kind {
            0 => UaIdentifier::Numeric(n),
            1 => UaIdentifier::String(s),
            2 => UaIdentifier::Guid(core::array::from_fn(|i| bytes[i % bytes.len()])),
            _ => UaIdentifier::Opaque(bytes),
        };
        let id = UaNodeId { namespace: ns, identifier };
        proptest::prop_assert_eq!(UaNodeId::parse(&id.to_string()), Some(id));
    }
}

#[test]
fn an_mqtt_sink_loads_and_its_mistakes_are_named() {
    let sink = "[[sink]]\nname = \"uns\"\nkind = \"mqtt\"\nurl = \"mqtts://broker.plant.local\"\ntopic = \"plant/{gateway_id}/{machine}/{type}\"\nusername = \"gw\"\npassword_env = \"MQTT_PASSWORD\"\nroutes = [\"*\"]\n";
    let text = format!("{GOOD}{sink}");
    let config = load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let SinkKind::Mqtt(mqtt) = &config.config().sinks[2].kind else {
        panic!("an mqtt sink")
    };
    assert_eq!(
        (mqtt.host.as_str(), mqtt.port, mqtt.tls),
        ("broker.plant.local", 8883, true)
    );
    assert_eq!(mqtt.topic, "plant/{gateway_id}/{machine}/{type}");
    assert_eq!(
        mqtt.credentials,
        Some(("gw".into(), Secret::Env("MQTT_PASSWORD".into())))
    );
    for (from, to, expected) in [
        (
            "mqtts://broker.plant.local",
            "mqtt://broker.plant.local",
            "would publish events unencrypted",
        ),
        (
            "mqtts://broker.plant.local",
            "mqtts://broker.plant.local/x",
            "has a path",
        ),
        ("{machine}", "{line}", "`{line}` is not a topic field"),
        (
            "plant/{gateway_id}",
            "plant/+",
            "cannot be a topic to publish to",
        ),
        (
            "password_env = \"MQTT_PASSWORD\"\n",
            "",
            "user `gw` has no password",
        ),
    ] {
        let errors = errors(&format!("{GOOD}{}", sink.replacen(from, to, 1)));
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
    }
    let insecure = sink
        .replace("mqtts://", "mqtt://")
        .replace("kind = \"mqtt\"", "kind = \"mqtt\"\ninsecure = true");
    let config = load("t.toml", &format!("{GOOD}{insecure}")).unwrap();
    let SinkKind::Mqtt(mqtt) = &config.config().sinks[2].kind else {
        panic!("an mqtt sink")
    };
    assert_eq!((mqtt.port, mqtt.tls, mqtt.v5), (1883, false, false));
    let v5 = sink.replace("routes", "mqtt_version = \"5\"\nroutes");
    let config = load("t.toml", &format!("{GOOD}{v5}")).unwrap();
    let SinkKind::Mqtt(mqtt) = &config.config().sinks[2].kind else {
        panic!("an mqtt sink")
    };
    assert!(mqtt.v5);
    let errors = errors(&format!("{GOOD}{}", v5.replace("\"5\"", "\"3\"")));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("mqtt_version = \"3\" is not one Causeway speaks")),
        "{errors:?}"
    );
}

#[test]
fn an_mqtt_source_loads_and_its_mistakes_are_named() {
    let source = r#"
gateway_id = "plant1"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtts://broker.plant.local"
username = "gw"
password_file = "/etc/causeway/mqtt.pw"
tags = [
  { name = "temp", topic = "plant/line3/press1/telemetry", value = "/m/temp", timestamp = "/ts" },
  { name = "parts", topic = "plant/line3/press1/parts", format = "text", type = "u32" },
]

[[rule]]
kind = "counter"
machine = "press1"
total = "uns.parts"

[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;
    let config = load("t.toml", source).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let SourceConfig::Mqtt(mqtt) = &config.config().sources[0] else {
        panic!("an mqtt source")
    };
    assert_eq!(
        (mqtt.port, mqtt.tls, mqtt.clean_session),
        (8883, true, true)
    );
    assert_eq!(mqtt.max_payload, 64 << 10);
    assert_eq!(
        mqtt.tags[0].format,
        MqttFormat::Json {
            value: "/m/temp".into(),
            timestamp: Some("/ts".into()),
            quality: None
        }
    );
    for (from, to, expected) in [
        (
            "plant/line3/press1/parts\"",
            "plant/line3/+/parts\"",
            "its name does not take level {3}",
        ),
        (
            "value = \"/m/temp\"",
            "value = \"m/temp\"",
            "is not a JSON Pointer",
        ),
        (
            "format = \"text\"",
            "format = \"xml\"",
            "unknown format `xml`",
        ),
        ("mqtts://", "mqtt://", "would publish events unencrypted"),
        (
            "topic = \"plant/line3/press1/telemetry\"",
            "topic = \"plant/line3/press1/parts\"",
            "read it in two formats",
        ),
        (
            "type = \"u32\" }",
            "}",
            "counter tag `uns.parts` has no declared type",
        ),
        (
            "topic = \"plant/line3/press1/parts\"",
            "register = \"holding:1\"",
            "`register` does not apply to a mqtt tag",
        ),
    ] {
        let text = source.replacen(from, to, 1);
        let errors = errors(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
    }
}

#[test]
fn a_sparkplug_tag_loads_and_its_mistakes_are_named() {
    let source = r#"
gateway_id = "plant1"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtt://broker.plant.local"
insecure = true
tags = [
  { name = "force", format = "sparkplug", group = "Plant1", edge_node = "Line3", device = "Press1", metric = "Press/Force" },
  { name = "parts", format = "sparkplug", group = "Plant1", edge_node = "Line3", metric = "Count", type = "u32" },
  { name = "temp", topic = "plant/line3/temp", value = "/t" },
]

[[rule]]
kind = "counter"
machine = "press1"
total = "uns.parts"

[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;
    let config = load("t.toml", source).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let SourceConfig::Mqtt(mqtt) = &config.config().sources[0] else {
        panic!("an mqtt source")
    };
    assert_eq!(
        mqtt.tags[0].format,
        MqttFormat::Sparkplug {
            group: "Plant1".into(),
            edge_node: "Line3".into(),
            device: Some("Press1".into()),
            metric: "Press/Force".into(),
        }
    );
    assert_eq!(mqtt.tags[0].topic, "spBv1.0/Plant1/+/Line3/Press1");
    assert_eq!(mqtt.tags[1].topic, "spBv1.0/Plant1/+/Line3");
    for (from, to, expected) in [
        (
            "edge_node = \"Line3\", device",
            "device",
            "sparkplug tag `force` has no `edge_node`",
        ),
        (
            "edge_node = \"Line3\", device",
            "edge_node = \"Line/3\", device",
            "`edge_node` = \"Line/3\" is not a Sparkplug id",
        ),
        (
            "group = \"Plant1\", edge_node = \"Line3\", device",
            "group = \"Plant#\", edge_node = \"Line3\", device",
            "`group` = \"Plant#\" is not a Sparkplug id",
        ),
        (
            "metric = \"Press/Force\"",
            "metric = \"Press/Force\", topic = \"a/b\"",
            "`topic` does not apply to format = \"sparkplug\"",
        ),
        (
            ", metric = \"Press/Force\"",
            "",
            "sparkplug tag `force` has no `metric`",
        ),
        (
            "value = \"/t\"",
            "value = \"/t\", metric = \"x\"",
            "`metric` applies to format = \"sparkplug\"",
        ),
        (
            "metric = \"Count\", type = \"u32\"",
            "metric = \"Count\"",
            "counter tag `uns.parts` has no declared type",
        ),
        (
            "metric = \"Count\", type = \"u32\"",
            "metric = \"Count\", type = \"u32\", value = \"/x\"",
            "`value` does not apply to format = \"sparkplug\"",
        ),
    ] {
        let text = source.replacen(from, to, 1);
        assert_ne!(text, source, "{from}");
        let errors = errors(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
        assert_eq!(errors.len(), 1, "one mistake, one error: {errors:?}");
    }
}

#[test]
fn a_wildcard_tag_is_named_from_topic_levels_and_rules_name_what_it_makes() {
    let source = r#"
gateway_id = "plant1"

[[source]]
name = "uns"
kind = "mqtt"
url = "mqtt://broker.plant.local"
insecure = true
tags = [
  { name = "{2}_{3}_parts", topic = "plant/+/+/parts", format = "text", type = "u32" },
]

[[rule]]
kind = "counter"
machine = "press1"
total = "uns.line3_press1_parts"

[[sink]]
name = "out"
kind = "stdout"
routes = ["*"]
"#;
    let config = load("t.toml", source).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let SourceConfig::Mqtt(mqtt) = &config.config().sources[0] else {
        panic!("an mqtt source")
    };
    assert_eq!(mqtt.tags[0].name, "{2}_{3}_parts");
    assert_eq!(mqtt.tags[0].topic, "plant/+/+/parts");
    assert!(
        config.warnings().problems.is_empty(),
        "{}",
        config.warnings().render(false)
    );
    // A declared tag whose name the template could also make: warned.
    let clash = source.replace(
        "{ name = \"{2}_{3}_parts\", topic = \"plant/+/+/parts\", format = \"text\", type = \"u32\" },",
        "{ name = \"{2}_{3}_parts\", topic = \"plant/+/+/parts\", format = \"text\", type = \"u32\" },\n  { name = \"line3_press1_parts\", topic = \"x/y\", format = \"text\", type = \"u32\" },",
    );
    assert_ne!(clash, source);
    let config = load("t.toml", &clash).unwrap_or_else(|r| panic!("{}", r.render(false)));
    assert!(
        config.warnings().problems.iter().any(|w| w
            .message
            .contains("could name a topic's tag `line3_press1_parts`")),
        "{}",
        config.warnings().render(false)
    );
    for (from, to, expected, alone) in [
        // The last: whether the mistake is the only error (a rule naming a tag a broken
        // template could make stays quiet).
        (
            "uns.line3_press1_parts",
            "uns.line3_parts",
            "names unknown tag `uns.line3_parts`",
            true,
        ),
        (
            "plant/+/+/parts",
            "plant/#",
            "a tag cannot read a `#` filter",
            true,
        ),
        (
            "{2}_{3}_parts",
            "{2}_parts",
            "its name does not take level {3}",
            false,
        ),
        (
            "{2}_{3}_parts",
            "{1}_{2}_{3}_parts",
            "{1} in tag name `{1}_{2}_{3}_parts` is not a `+` level",
            false,
        ),
        (
            "{2}_{3}_parts",
            "{2}_{3}.parts",
            "cannot be a tag name",
            false,
        ),
        (
            "{2}_{3}_parts",
            "{2}_{x}_parts",
            "brace that is not a topic level",
            false,
        ),
        (
            "plant/+/+/parts",
            "plant/+/l+/parts",
            "`plant/+/l+/parts` is not a topic a tag can be read from",
            true,
        ),
    ] {
        let text = source.replacen(from, to, 1);
        assert_ne!(text, source, "{from}");
        let errors = errors(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
        if alone {
            assert_eq!(errors.len(), 1, "one mistake, one error: {errors:?}");
        }
    }
}

#[test]
fn a_telemetry_rule_loads_and_its_mistakes_are_named() {
    let rule = "[[rule]]\nkind = \"telemetry\"\ntags = [\"press1.*\", \"press1.parts_total\"]\ndeadband = \"2%\"\nmin_interval = \"1s\"\nheartbeat = \"1m\"\n";
    let text = format!("{GOOD}{rule}");
    let config = load("t.toml", &text).unwrap_or_else(|r| panic!("{}", r.render(false)));
    let Some(RuleConfig::Telemetry(t)) = config.config().rules.last() else {
        panic!("a telemetry rule")
    };
    assert_eq!(
        (t.name.as_str(), t.machine.as_str()),
        ("telemetry-press1", "press1")
    );
    assert_eq!(t.tags, ["press1.*", "press1.parts_total"]);
    assert_eq!(t.deadband, Some(Deadband::Percent(2.0)));
    assert_eq!(t.min_interval, std::time::Duration::from_secs(1));
    assert_eq!(t.heartbeat, Some(std::time::Duration::from_secs(60)));
    assert!(t.forwards("press1.force_kn") && !t.forwards("press2.force"));
    for (from, to, expected) in [
        ("\"press1.*\"", "\"press9.*\"", "`press9.*` matches no tag"),
        (
            "\"press1.parts_total\"",
            "\"press1.parts_totl\"",
            "`tags` names unknown tag `press1.parts_totl`",
        ),
        ("\"press1.*\"", "\"*.*.*.*.*.*\"", "more than 4 `*`"),
        (
            "heartbeat = \"1m\"",
            "heartbeat = \"500ms\"",
            "heartbeat = \"500ms\" is too short",
        ),
        (
            "min_interval = \"1s\"",
            "min_interval = \"2m\"",
            "heartbeat is shorter than min_interval",
        ),
        (
            "tags = [\"press1.*\", \"press1.parts_total\"]",
            "tags = []",
            "`tags` must name 1 to 1000",
        ),
        (
            "tags = [\"press1.*\", \"press1.parts_total\"]\n",
            "",
            "a telemetry rule needs `tags`",
        ),
        ("deadband = \"2%\"", "deadband = \"-2%\"", "deadband"),
        (
            "kind = \"telemetry\"",
            "kind = \"telemetri\"",
            "unknown rule kind `telemetri`",
        ),
    ] {
        let text = format!("{GOOD}{}", rule.replacen(from, to, 1));
        let errors = errors(&text);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{to}: {errors:?}"
        );
    }
}

/// The naive recursive reading of a `*` pattern, for comparison.
fn glob_reference(p: &[u8], t: &[u8]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| glob_reference(rest, &t[i..])),
        Some((c, rest)) => t.first() == Some(c) && glob_reference(rest, &t[1..]),
    }
}

proptest::proptest! {
    #[test]
    fn patterns_match_as_the_naive_reading_does(p in "[ab*.]{0,8}", t in "[ab.]{0,10}") {
        proptest::prop_assert_eq!(route_matches(&p, &t), glob_reference(p.as_bytes(), t.as_bytes()));
    }
}

#[test]
fn a_pattern_of_many_stars_against_a_long_name_is_quick() {
    // The naive reading backtracks for ever here; this one takes at most pattern x text steps.
    let name = "a".repeat(10_000);
    assert!(!route_matches("*a*a*a*b", &name));
    assert!(route_matches("*a*a*a*", &name));
    assert!(route_matches("press1.*", "press1."));
    assert!(route_matches("*", ""));
}

/// The config's first https sink.
fn https_sink(config: &ValidatedConfig) -> &HttpsSinkConfig {
    config
        .sinks
        .iter()
        .find_map(|s| match &s.kind {
            SinkKind::Https(h) => Some(h),
            _ => None,
        })
        .expect("an https sink")
}

#[test]
fn basic_and_api_key_auth_come_from_files_or_the_environment_and_never_inline() {
    let with = |auth: &str| GOOD.replace("auth = { bearer_env = \"ERP_TOKEN\" }", auth);
    let config = load(
        "t.toml",
        &with("auth = { username = \"causeway\", password_file = \"/etc/causeway/erp.pw\" }"),
    )
    .unwrap();
    let https = https_sink(&config);
    assert!(matches!(
        &https.auth,
        Some(HttpAuth::Basic { username, password: Secret::File(_) }) if username == "causeway"
    ));
    let config = load(
        "t.toml",
        &with("auth = { api_key_header = \"X-API-Key\", api_key_env = \"ERP_KEY\" }"),
    )
    .unwrap();
    let https = https_sink(&config);
    assert!(matches!(
        &https.auth,
        Some(HttpAuth::ApiKey { header, key: Secret::Env(v) }) if header == "X-API-Key" && v == "ERP_KEY"
    ));
    // Each mistake named where it is.
    assert_eq!(
        errors(&with("auth = { username = \"causeway\" }")),
        vec!["`auth.username` needs its password".to_owned()]
    );
    assert_eq!(
        errors(&with(
            "auth = { api_key_header = \"X API\", api_key_env = \"K\" }"
        )),
        vec!["`X API` is not an HTTP header name".to_owned()]
    );
    assert_eq!(
        errors(&with(
            "auth = { bearer_env = \"T\", api_key_header = \"X-Key\", api_key_env = \"K\" }"
        )),
        vec!["`auth` names more than one kind of credential".to_owned()]
    );
    assert_eq!(
        errors(&with(
            "auth = { username = \"u\", password_env = \"P\", password_file = \"/p\" }"
        )),
        vec!["`password_env` and `password_file` are both set".to_owned()]
    );
    // An inline key is refused and never printed, not even as a context line.
    let inline = with("auth = { api_key_header = \"X-API-Key\", api_key = \"k3y-s3cr3t\" }");
    let rendered = match load("t.toml", &inline) {
        Ok(_) => panic!("refused"),
        Err(report) => report.render(false),
    };
    assert!(rendered.contains("auth.api_key"), "{rendered}");
    assert!(!rendered.contains("k3y-s3cr3t"), "{rendered}");
    // Mutual TLS on an https sink: a certificate with its key.
    let mtls = GOOD.replace(
        "auth = { bearer_env = \"ERP_TOKEN\" }",
        "client_certificate = \"/etc/causeway/client.pem\"\nclient_key = \"/etc/causeway/client.key\"",
    );
    let config = load("t.toml", &mtls).unwrap_or_else(|r| panic!("{}", r.render(false)));
    assert!(https_sink(&config).identity.is_some());
    let half = GOOD.replace(
        "auth = { bearer_env = \"ERP_TOKEN\" }",
        "client_certificate = \"/etc/causeway/client.pem\"",
    );
    assert_eq!(
        errors(&half),
        vec!["`client_certificate` needs `client_key`".to_owned()]
    );
}

#[test]
fn oauth2_client_credentials_are_checked_whole_and_the_secret_never_inline() {
    let with = |auth: &str| GOOD.replace("auth = { bearer_env = \"ERP_TOKEN\" }", auth);
    let config = load(
        "t.toml",
        &with("auth = { token_url = \"https://login.example.com/oauth2/token\", client_id = \"causeway\", client_secret_env = \"ERP_SECRET\", scope = \"events:write\" }"),
    )
    .unwrap_or_else(|r| panic!("{}", r.render(false)));
    assert!(matches!(
        &https_sink(&config).auth,
        Some(HttpAuth::OAuth2 { client_id, scope: Some(scope), audience: None, .. })
            if client_id == "causeway" && scope == "events:write"
    ));
    assert_eq!(
        errors(&with(
            "auth = { token_url = \"https://login.example.com/t\", client_id = \"causeway\" }"
        )),
        vec!["OAuth2 client credentials need `token_url`, `client_id` and `client_secret_file` or `client_secret_env`".to_owned()]
    );
    assert_eq!(
        errors(&with(
            "auth = { token_url = \"http://login.example.com/t\", client_id = \"c\", client_secret_env = \"S\" }"
        )),
        vec!["the token endpoint's scheme `http` is not https".to_owned()]
    );
    assert_eq!(
        errors(&with(
            "auth = { token_url = \"https://id:pw@login.example.com/t\", client_id = \"c\", client_secret_env = \"S\" }"
        )),
        vec!["`auth.token_url` carries credentials".to_owned()]
    );
    assert_eq!(
        errors(&with("auth = { bearer_env = \"T\", scope = \"x\" }")),
        vec!["`scope` and `audience` belong to OAuth2 (`token_url`)".to_owned()]
    );
    let inline = with(
        "auth = { token_url = \"https://login.example.com/t\", client_id = \"c\", client_secret = \"cl13nt-s3cr3t\" }",
    );
    let rendered = match load("t.toml", &inline) {
        Ok(_) => panic!("refused"),
        Err(report) => report.render(false),
    };
    assert!(rendered.contains("auth.client_secret"), "{rendered}");
    assert!(!rendered.contains("cl13nt-s3cr3t"), "{rendered}");
}

#[test]
fn the_breaker_and_the_rate_limit_are_bounded_by_check() {
    let config = load("t.toml", GOOD).unwrap();
    let sink = &config.sinks[0];
    assert_eq!(
        (sink.breaker_failures, sink.breaker_open, sink.rate_limit),
        (5, std::time::Duration::from_secs(30), None),
        "the defaults"
    );
    let set = GOOD.replace(
        "routes = [\"quality.measurement\"]",
        "routes = [\"quality.measurement\"]\nbreaker_failures = 3\nbreaker_open = \"2m\"\nrate_limit = 0.5",
    );
    let config = load("t.toml", &set).unwrap();
    let sink = &config.sinks[1];
    assert_eq!(
        (sink.breaker_failures, sink.breaker_open, sink.rate_limit),
        (3, std::time::Duration::from_secs(120), Some(0.5))
    );
    let wrong = GOOD.replace(
        "routes = [\"quality.measurement\"]",
        "routes = [\"quality.measurement\"]\nbreaker_failures = 0\nbreaker_open = \"2h\"\nrate_limit = 0.0",
    );
    assert_eq!(
        errors(&wrong),
        vec![
            "breaker_failures = 0 is out of range".to_owned(),
            "breaker_open = \"2h\" is too long".to_owned(),
            "rate_limit = 0 is out of range".to_owned(),
        ]
    );
}

#[test]
fn body_templates_method_and_headers_load_into_the_model() {
    let erp = |extra: &str| {
        GOOD.replace(
            "routes = [\"production.*\"]",
            &format!("routes = [\"production.*\"]\n{extra}"),
        )
    };
    let config = load(
        "t.toml",
        &erp("template_file = \"erp.json.j2\"\nper = \"event\"\nmethod = \"put\"\nheaders = { \"X-Plant\" = \"p1\" }"),
    )
    .unwrap();
    let https = https_sink(&config);
    assert_eq!(https.method, "PUT");
    assert_eq!(https.headers, [("X-Plant".to_owned(), "p1".to_owned())]);
    assert_eq!(
        https.body,
        Body::Template(BodyTemplate {
            source: TemplateSource::File("erp.json.j2".into()),
            per_event: true,
            content_type: "application/json".into(),
        })
    );
    let erp_sink = &config.sinks[0];
    assert_eq!(erp_sink.batch_size, 1, "one event per request");
    assert_eq!(
        erp_sink.routes,
        ["production.*"],
        "a templated sink gets gateway events only when its routes say so"
    );
    assert!(!erp_sink.accepts("gateway.buffer_reset"));
    assert!(
        config.sinks[1].accepts("gateway.buffer_reset"),
        "every other sink does"
    );
    let inline = load(
        "t.toml",
        &erp(
            "template = \"<a>{{ event.id|xml }}</a>\"\ncontent_type = \"text/xml; charset=utf-8\"",
        ),
    )
    .unwrap();
    assert!(matches!(
        &https_sink(&inline).body,
        Body::Template(t) if t.source == TemplateSource::Inline("<a>{{ event.id|xml }}</a>".into())
            && !t.per_event && t.content_type == "text/xml; charset=utf-8"
    ));
    assert_eq!(
        https_sink(&load("t.toml", GOOD).unwrap()).body,
        Body::CloudEvents
    );
}

#[test]
fn body_template_mistakes_are_each_named() {
    let erp = |extra: &str| {
        GOOD.replace(
            "routes = [\"production.*\"]",
            &format!("routes = [\"production.*\"]\n{extra}"),
        )
    };
    for (extra, expected) in [
        ("format = \"json\"", "unknown format `json`"),
        (
            "format = \"template\"",
            "sink `erp` has format = \"template\" but no template",
        ),
        (
            "format = \"cloudevents\"\ntemplate = \"x\"",
            "a template is set but format = \"cloudevents\"",
        ),
        (
            "template = \"x\"\ntemplate_file = \"y\"",
            "both template and template_file are set",
        ),
        ("per = \"event\"", "per is only for a template body"),
        (
            "template = \"x\"\nper = \"request\"",
            "per = \"request\" is neither batch nor event",
        ),
        (
            "template = \"x\"\ncontent_type = \"json\"",
            "content_type = \"json\" is not a media type",
        ),
        ("method = \"GET\"", "method `GET` cannot deliver events"),
        (
            "headers = { \"Content-Type\" = \"text/plain\" }",
            "header `Content-Type` is set by the sink",
        ),
        (
            "headers = { \"X-Api-Key\" = \"s3cr3t\" }",
            "header `X-Api-Key` looks like a credential written inline",
        ),
        (
            "headers = { \"Bad Name\" = \"v\" }",
            "`Bad Name` is not a header name",
        ),
        (
            "headers = { \"X-Plant\" = \"a\\nb\" }",
            "the value of header `X-Plant` holds characters a header cannot carry",
        ),
        (
            "template = \"x\"\nper = \"event\"\nbatch_size = 10",
            "batch_size = 10 with per = \"event\"",
        ),
    ] {
        assert_eq!(errors(&erp(extra)), vec![expected.to_owned()], "{extra}");
    }
}

#[test]
fn a_credential_written_into_headers_is_masked_in_the_rendered_report() {
    let text = GOOD.replace(
        "routes = [\"production.*\"]",
        "routes = [\"production.*\"]\nheaders = { \"X-Api-Key\" = \"s3cr3t-v4lue\" }",
    );
    let report = load("t.toml", &text).unwrap_err();
    let rendered = report.render(false);
    assert!(rendered.contains("looks like a credential"), "{rendered}");
    assert!(!rendered.contains("s3cr3t-v4lue"), "{rendered}");
}

#[test]
fn a_credential_in_the_urls_query_is_warned_about_and_masked() {
    let text = GOOD.replace(
        "url = \"https://erp.example.com/api/production\"",
        "url = \"https://erp.example.com/api/production?plant=1&api_key=s3cr3t-v4lue\"",
    );
    let config = load("t.toml", &text).unwrap();
    let warning = config.warnings().problems[0].clone();
    assert_eq!(
        warning.message,
        "the url's query carries a credential (`api_key`)"
    );
    let rendered = config.warnings().render(false);
    assert!(rendered.contains("api/production?"), "{rendered}");
    assert!(!rendered.contains("s3cr3t-v4lue"), "{rendered}");
    // A name written percent-encoded or as a TOML escape, a value with an escaped quote.
    for query in [
        "?%74oken=s3cr3t-v4lue",
        "?\\u0074oken=s3cr3t-v4lue",
        "?token=s3cr3t\\\"-v4lue",
    ] {
        let text = GOOD.replace(
            "url = \"https://erp.example.com/api/production\"",
            &format!("url = \"https://erp.example.com/api/production{query}\""),
        );
        let config = load("t.toml", &text).unwrap();
        let rendered = config.warnings().render(false);
        assert!(
            rendered.contains("carries a credential (`token`)"),
            "{query}: {rendered}"
        );
        assert!(!rendered.contains("s3cr3t"), "{query}: {rendered}");
        assert!(!rendered.contains("v4lue"), "{query}: {rendered}");
    }
    // An error that names the URL names it without its query.
    let text = GOOD.replace(
        "url = \"https://erp.example.com/api/production\"",
        "url = \"htps://erp.example.com/api?api_key=s3cr3t-v4lue\"",
    );
    let rendered = load("t.toml", &text).unwrap_err().render(false);
    assert!(
        rendered.contains("`htps://erp.example.com/api?***` is not an http(s) URL"),
        "{rendered}"
    );
    assert!(!rendered.contains("s3cr3t"), "{rendered}");
}

#[test]
fn credential_names_are_judged_by_their_words() {
    for name in [
        "X-API-Key",
        "api_key",
        "apikey",
        "access_token",
        "sig",
        "X-Auth-Token",
        "client_secret",
        "Cookie",
    ] {
        assert!(crate::raw::credential_header(name), "{name}");
    }
    for name in [
        "author",
        "design",
        "keyword",
        "signal",
        "plant",
        "X-Plant",
        "SOAPAction",
    ] {
        assert!(!crate::raw::credential_header(name), "{name}");
    }
}

/// A webhook source with `fields` (TOML lines), beside GOOD's.
fn webhook(fields: &str) -> String {
    GOOD.replacen(
        "[[sink]]",
        &format!(
            "[[source]]\nname = \"mes\"\nkind = \"webhook\"\n{fields}\ntags = [ {{ name = \"n\", value = \"/n\", type = \"u32\" }} ]\n\n[[sink]]"
        ),
        1,
    )
}

#[test]
fn a_webhook_source_loads_and_its_mistakes_are_each_named() {
    const OK: &str = "listen = \"0.0.0.0:8443\"\ncertificate = \"w.pem\"\nkey = \"w.key\"\nauth = { hmac_header = \"X-Signature-256\", hmac_secret_file = \"w.secret\", hmac_prefix = \"sha256=\" }";
    let config = load("t.toml", &webhook(OK)).unwrap();
    let Some(SourceConfig::Webhook(hook)) = config.sources.last() else {
        panic!("{:?}", config.sources);
    };
    assert_eq!(hook.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(hook.path, "/");
    assert_eq!(hook.max_body, 64 << 10);
    assert_eq!(
        hook.auth,
        WebhookAuth::Hmac {
            header: "X-Signature-256".into(),
            secret: Secret::File("w.secret".into()),
            prefix: "sha256=".into(),
        }
    );
    assert_eq!(hook.tags[0].value, "/n");
    let with = |from: &str, to: &str| webhook(&OK.replace(from, to));
    for (text, expected) in [
        (
            with("listen = \"0.0.0.0:8443\"\n", ""),
            "webhook source `mes` has no listen address",
        ),
        (
            with("0.0.0.0:8443", "plant.local:8443"),
            "listen = \"plant.local:8443\" is not an address and port",
        ),
        (with("0.0.0.0:8443", "0.0.0.0:0"), "listen names port 0"),
        (
            with("certificate = \"w.pem\"\nkey = \"w.key\"\n", ""),
            "webhook source `mes` would take posts unencrypted",
        ),
        (with("key = \"w.key\"\n", ""), "`certificate` needs `key`"),
        (
            with("listen", "insecure = true\nlisten"),
            "insecure = true with a certificate",
        ),
        (
            with(
                "auth = { hmac_header = \"X-Signature-256\", hmac_secret_file = \"w.secret\", hmac_prefix = \"sha256=\" }",
                "",
            ),
            "webhook source `mes` has no auth",
        ),
        (
            with(
                "hmac_secret_file = \"w.secret\"",
                "hmac_secret = \"s3cr3t-v4lue-0123\"",
            ),
            "`hmac_secret` is written inline in the config file",
        ),
        (
            with(
                "hmac_header = \"X-Signature-256\",",
                "hmac_header = \"X-Signature-256\", api_key_header = \"X-Key\",",
            ),
            "both an API key and an HMAC signature are set",
        ),
        (
            with("hmac_secret_file = \"w.secret\", ", ""),
            "no `hmac_secret_file` or `hmac_secret_env`",
        ),
        (
            with("listen", "path = \"/zähler\"\nlisten"),
            "path = \"/zähler\" is not a plain URL path",
        ),
        (
            with("listen", "max_body = \"2MiB\"\nlisten"),
            "max_body = 2MiB is too large",
        ),
    ] {
        assert_eq!(errors(&text), vec![expected.to_owned()], "{text}");
    }
    // Two sources on one port.
    let two = webhook(OK).replacen(
        "[[sink]]",
        &format!("[[source]]\nname = \"scada\"\nkind = \"webhook\"\n{OK}\n\n[[sink]]"),
        1,
    );
    assert!(
        errors(&two).contains(&"two webhook sources listen on port 8443".to_owned()),
        "{:?}",
        errors(&two)
    );
    // Plain http is allowed with insecure, and warned about.
    let plain = with(
        "certificate = \"w.pem\"\nkey = \"w.key\"\n",
        "insecure = true\n",
    );
    let config = load("t.toml", &plain).unwrap();
    assert!(
        config
            .warnings()
            .problems
            .iter()
            .any(|p| p.message == "webhook source `mes` takes posts over plain http"),
        "{:?}",
        config.warnings().problems
    );
    // An inline secret never shows in the report.
    let inline = with(
        "hmac_secret_file = \"w.secret\"",
        "hmac_secret = \"s3cr3t-v4lue-0123\"",
    );
    let rendered = load("t.toml", &inline).unwrap_err().render(false);
    assert!(!rendered.contains("s3cr3t"), "{rendered}");
}
