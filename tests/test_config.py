"""Configuration loading: defaults, `path:line:` problems, `${VAR}`, `HERALD_*` overrides."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from pydantic import ValidationError

from service.config import (
    Config,
    ConfigError,
    DenyAction,
    PythonAction,
    RedirectAction,
    SendEmailAction,
    SetMetadataAction,
    SmtpConfig,
    load_config,
    parse_config,
    resolve_config_path,
)
from service.mail.render import normalize_locale
from service.triggers import TRIGGERS
from tests.harness import KUBERNETES

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "herald.yaml"
SECRET = "hunter2-secret"


def parse(text: str, environ: dict[str, str] | None = None) -> Config:
    return parse_config(dedent(text), "herald.yaml", environ or {})


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


# --- the shipped file and defaults ---------------------------------------------------


def test_shipped_config_loads_in_a_clean_environment() -> None:
    config = load_config(SHIPPED, environ={})
    assert set(config.flows) == set(TRIGGERS)
    templates = {
        trigger: [a.template for a in actions if isinstance(a, SendEmailAction)]
        for trigger, actions in config.flows.items()
    }
    assert templates["post-change-password"] == ["password_changed"]
    assert templates["post-user-registration"] == ["welcome"]
    assert templates["password-reset-requested"] == ["password_reset"]
    assert templates["email-verification-requested"] == ["verify_email"]
    assert templates["login-failed"] == ["login_alert"]
    deny, init = config.flows["pre-user-registration"]
    assert isinstance(deny, DenyAction) and not deny.enabled
    assert isinstance(init, SetMetadataAction) and init.app_metadata["is_new_user"] is True
    (downtime,) = config.flows["post-login"]
    assert isinstance(downtime, RedirectAction) and not downtime.enabled
    assert config.secrets == {"SUPPORT_URL": "https://example.com/support"}
    assert config.smtp.password.get_secret_value() == ""


def test_shipped_config_values_match_the_defaults() -> None:
    config = load_config(SHIPPED, environ={})
    defaults = Config()
    for section in ("kafka", "smtp", "retry", "rate_limit", "dedupe", "http", "log"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.templates_dir == defaults.templates_dir
    assert config.default_locale == defaults.default_locale


@pytest.mark.parametrize("text", ["", "# nothing here\n", "smtp:\nflows:\n"])
def test_empty_file_gives_defaults(text: str) -> None:
    config = parse(text)
    assert config == Config()
    assert config.kafka.topics == ["identity.events"]
    assert config.smtp.port == 1025
    assert config.smtp.from_ == "Example <no-reply@example.com>"
    assert config.dedupe.ttl_s == 604800
    assert config.templates_dir == Path("templates")
    assert config.flows == {}


def test_resolve_config_path() -> None:
    assert resolve_config_path("a.yaml", {"HERALD_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert resolve_config_path(None, {"HERALD_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert resolve_config_path(None, {}) == Path("config/herald.yaml")


# --- problems with their lines -------------------------------------------------------


def test_unknown_key_reports_its_line() -> None:
    text = """\
        smtp:
          host: mail
          prot: 25
        """
    assert problems(text) == ["herald.yaml:3: smtp.prot: unknown key"]


def test_unknown_section_reports_its_line() -> None:
    assert problems("http: {}\nsmpt:\n  port: 25\n") == ["herald.yaml:2: smpt: unknown key"]


def test_wrong_type_reports_its_line() -> None:
    text = """\
        smtp:
          host: mail
          port: twenty-five
        """
    (problem,) = problems(text)
    assert problem.startswith("herald.yaml:3: smtp.port: Input should be a valid integer")


def test_out_of_range_and_bad_choice() -> None:
    text = """\
        http:
          port: 70000
        dedupe:
          backend: postgres
        """
    found = problems(text)
    assert found[0] == "herald.yaml:2: http.port: Input should be less than or equal to 65535"
    assert found[1].startswith("herald.yaml:4: dedupe.backend: Input should be 'sqlite'")


def test_data_timeout_is_its_own_and_positive() -> None:
    """`smtp.data_timeout_s` bounds only the reply to the final "." (README: Configuration)."""
    smtp = parse("smtp:\n  timeout_s: 1\n").smtp
    assert (smtp.timeout_s, smtp.data_timeout_s) == (1, 600)
    assert parse("smtp:\n  data_timeout_s: 0.5\n").smtp.data_timeout_s == 0.5
    assert problems("smtp:\n  data_timeout_s: 0\n") == [
        "herald.yaml:2: smtp.data_timeout_s: Input should be greater than 0"
    ]


def test_unknown_trigger() -> None:
    text = """\
        flows:
          post-logon:
            - action: deny
        """
    (problem,) = problems(text)
    assert problem.startswith("herald.yaml:2: flows.post-logon: unknown trigger 'post-logon'")
    assert "post-login" in problem


def test_action_not_allowed_on_trigger_reports_the_action_line() -> None:
    text = """\
        flows:
          login-failed:
            - action: send_email
              template: login_alert
            - action: deny
              reason: nope
        """
    (problem,) = problems(text)
    assert problem.startswith(
        "herald.yaml:5: flows.login-failed[1]: action 'deny' is not allowed on trigger "
        "'login-failed'"
    )


def test_duplicate_ids_in_a_flow() -> None:
    text = """\
        flows:
          post-login:
            - {id: gate, action: deny}
            - {id: gate, action: redirect, url: "https://example.com"}
            - {action: deny}
            - {id: deny-3, action: deny}
        """
    found = problems(text)
    assert found == [
        "herald.yaml:4: flows.post-login[1].id: duplicate action id 'gate' "
        "(also flows.post-login[0])",
        "herald.yaml:6: flows.post-login[3].id: duplicate action id 'deny-3' "
        "(also flows.post-login[2])",
    ]


def test_same_id_in_different_flows_is_fine() -> None:
    config = parse("""\
        flows:
          post-login: [{id: a, action: deny}]
          pre-user-registration: [{id: a, action: deny}]
        """)
    assert config.flows["post-login"][0].id == config.flows["pre-user-registration"][0].id


def test_default_ids_are_action_and_position() -> None:
    config = parse("""\
        flows:
          post-login:
            - {action: set_metadata, app_metadata: {seen: true}}
            - {id: mine, action: deny}
            - {action: send_email, template: welcome}
            - {action: python, handler: "hooks.login:on_login"}
        """)
    ids = [action.id for action in config.flows["post-login"]]
    assert ids == ["set_metadata-1", "mine", "send_email-3", "python-4"]


def test_action_defaults_and_kinds() -> None:
    config = parse("""\
        flows:
          post-login:
            - {action: send_email, template: welcome}
            - {action: python, handler: "hooks.login:on_login", timeout_s: 2}
        """)
    email, handler = config.flows["post-login"]
    assert isinstance(email, SendEmailAction)
    assert (email.to, email.from_, email.enabled, email.when) == (
        "event.user.email",
        None,
        True,
        None,
    )
    assert isinstance(handler, PythonAction) and handler.timeout_s == 2


def test_null_flow_is_empty() -> None:
    assert parse("flows:\n  post-login:\n").flows == {"post-login": []}


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("{action: send_email}", "herald.yaml:3: flows.post-login[0].template: required"),
        ("{action: send_email, template: ../etc}", "flows.post-login[0].template: a template"),
        ("{action: send_email, template: t, when: 'a >'}", "[0].when: invalid Jinja2"),
        ("{action: send_email, template: t, to: '{{'}", "[0].to: invalid Jinja2"),
        ("{action: redirect, url: /relative}", "[0].url: must be an absolute http"),
        ("{action: python, handler: not-a-handler}", "[0].handler: String should match"),
        ("{action: deny, timeout_s: 0}", "[0].timeout_s: Input should be greater than 0"),
        ("{action: teleport}", "[0]: unknown action 'teleport'"),
        ("{template: welcome}", "[0]: 'action' is required"),
    ],
)
def test_bad_actions(action: str, expected: str) -> None:
    (problem,) = problems(f"flows:\n  post-login:\n    - {action}\n")
    assert problem.startswith("herald.yaml:3: ")
    assert expected in problem


def test_when_error_points_at_its_line() -> None:
    text = """\
        flows:
          post-change-password:
            - action: send_email
              template: password_changed
              when: "event.user.email_verified and"
        """
    (problem,) = problems(text)
    assert problem.startswith("herald.yaml:5: flows.post-change-password[0].when: ")


def test_cross_field_checks() -> None:
    text = """\
        kafka:
          security_protocol: SASL_SSL
        retry:
          initial_backoff_s: 5
          max_backoff_s: 1
        """
    assert problems(text) == [
        # sasl_mechanism is not in the file: the problem points at its section.
        "herald.yaml:1: kafka.sasl_mechanism: required when security_protocol is SASL_SSL",
        "herald.yaml:5: retry.max_backoff_s: must be >= initial_backoff_s (5.0)",
    ]


def test_log_level_accepts_lowercase() -> None:
    assert parse("log: {level: debug}").log.level == "DEBUG"
    assert parse("log: {level: warn}").log.level == "WARNING"


def test_yaml_syntax_error_reports_its_line() -> None:
    text = """\
        smtp:
          host: mail
          port: [25
        retry: {}
        """
    (problem,) = problems(text)
    assert problem.startswith("herald.yaml:4: invalid YAML: ")


def test_duplicate_yaml_key_is_reported() -> None:
    found = problems("smtp:\n  port: 25\n  port: 26\n")
    assert found == ["herald.yaml:3: smtp.port: duplicate key"]


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- kafka\n") == ["herald.yaml:1: the top level must be a mapping of sections"]


def test_multiple_problems_are_all_reported_in_line_order() -> None:
    text = """\
        kafka:
          topics: []
        smtp:
          port: x
          timeout_s: -1
        flows:
          nope: []
          login-failed: [{action: redirect, url: "https://example.com"}]
        """
    found = problems(text)
    lines = [int(problem.split(":")[1]) for problem in found]
    assert lines == [2, 4, 5, 7, 8]


# --- ${VAR} ---------------------------------------------------------------------------


def test_variables_are_resolved_anywhere_in_a_string() -> None:
    text = """\
        kafka:
          bootstrap_servers: "${BROKER}:9092"
        smtp:
          host: ${SMTP_HOST:-mail.internal}
          port: ${SMTP_PORT:-2525}
          username: ${SMTP_USER:-fallback}
          password: ${SMTP_PASSWORD}
        secrets:
          LITERAL: "$${NOT_A_VAR}"
        """
    environ = {"BROKER": "kafka-1", "SMTP_USER": "", "SMTP_PASSWORD": "pw"}
    config = parse(text, environ)
    assert config.kafka.bootstrap_servers == "kafka-1:9092"
    assert config.smtp.host == "mail.internal"
    assert config.smtp.port == 2525
    assert config.smtp.username == "fallback"  # set but empty uses the default, as in sh
    assert config.smtp.password.get_secret_value() == "pw"
    assert config.secrets["LITERAL"] == "${NOT_A_VAR}"


def test_unset_variable_without_default_is_reported_with_its_line() -> None:
    text = """\
        smtp:
          host: mail
          password: ${SMTP_PASSWORD}
        kafka:
          topics: ["${TOPIC}"]
        """
    assert problems(text) == [
        "herald.yaml:3: smtp.password: environment variable SMTP_PASSWORD is not set",
        "herald.yaml:5: kafka.topics[0]: environment variable TOPIC is not set",
    ]


def test_empty_default_counts_as_null_for_optional_keys() -> None:
    config = parse("kafka:\n  ssl_cafile: ${CA:-}\n  sasl_mechanism: ${MECH:-}\n")
    assert config.kafka.ssl_cafile is None
    assert config.kafka.sasl_mechanism is None


# --- HERALD_* overrides ------------------------------------------------------------------


def test_env_overrides_win_and_are_coerced() -> None:
    text = """\
        kafka:
          bootstrap_servers: file:9092
        smtp:
          port: 1025
        """
    environ = {
        "HERALD_KAFKA__BOOTSTRAP_SERVERS": "env:9092",
        "HERALD_SMTP__PORT": "2525",
        "herald_dedupe__backend": "memory",
        "HERALD_KAFKA__TOPICS": "a, b,",
        "HERALD_DEFAULT_LOCALE": "de",
        "HERALD_LOG__SHOW_ADDRESSES": "true",
        "HERALD_SMTP__FROM": "Ops <ops@example.com>",
        "HERALD_CONFIG": "elsewhere.yaml",
    }
    config = parse(text, environ)
    assert config.kafka.bootstrap_servers == "env:9092"
    assert config.smtp.port == 2525
    assert config.dedupe.backend == "memory"
    assert config.kafka.topics == ["a", "b"]
    assert config.default_locale == "de"
    assert config.log.show_addresses is True
    assert config.smtp.from_ == "Ops <ops@example.com>"


def test_env_override_of_a_secret_keeps_its_key() -> None:
    config = parse("secrets:\n  SUPPORT_URL: a\n", {"HERALD_SECRETS__support_url": "b"})
    assert config.secrets == {"SUPPORT_URL": "b"}


def test_env_override_replaces_an_unset_variable() -> None:
    config = parse("smtp:\n  password: ${SMTP_PASSWORD}\n", {"HERALD_SMTP__PASSWORD": "pw"})
    assert config.smtp.password.get_secret_value() == "pw"


def test_bad_env_overrides_are_reported_by_name() -> None:
    environ = {
        "HERALD_SMTP__PROT": "25",
        "HERALD_SMPT__PORT": "25",
        "HERALD_FLOWS__POST_LOGIN": "x",
        "HERALD_HTTP__PORT": "eighty",
    }
    found = problems("", environ)
    assert "HERALD_SMTP__PROT: unknown key 'prot' in section 'smtp'" in found
    assert "HERALD_SMPT__PORT: unknown setting 'smpt'" in found
    assert any(p.startswith("HERALD_FLOWS__POST_LOGIN: ") for p in found)
    assert any(p.startswith("HERALD_HTTP__PORT: Input should be a valid integer") for p in found)
    assert len(found) == 4


def test_herald_names_without_a_double_underscore_are_someone_elses() -> None:
    # Kubernetes sets these for a Service named `herald`; `HERALD_KAFKA` names no key.
    environ = {
        **KUBERNETES,
        "HERALD_KAFKA": "x",
        "HERALD_SECRETS": "x",
    }
    assert parse("", environ) == parse("", {})
    assert problems("", {**environ, "HERALD_KAFKA__NOPE": "x"}) == [
        "HERALD_KAFKA__NOPE: unknown key 'nope' in section 'kafka'"
    ]


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_appear_in_error_text() -> None:
    text = f"""\
        kafka:
          sasl_password: [{SECRET}]
          security_protocol: {SECRET}
        smtp:
          port: {SECRET}
          password: {{nested: {SECRET}}}
          security: {SECRET}
        secrets:
          API_KEY: [{SECRET}]
        """
    found = problems(text)
    assert len(found) == 6
    assert SECRET not in "\n".join(found)


def test_secrets_never_appear_in_yaml_syntax_errors() -> None:
    found = problems(f"smtp:\n  password: {SECRET}: oops\n")
    assert found[0].startswith("herald.yaml:2: invalid YAML")
    assert SECRET not in "\n".join(found)


def test_secrets_never_appear_in_env_override_errors() -> None:
    found = problems("", {"HERALD_SMTP__PORT": SECRET, "HERALD_SMTP__PASSWRD": SECRET})
    assert len(found) == 2
    assert SECRET not in "\n".join(found)


def test_secrets_are_not_in_repr() -> None:
    text = f"smtp: {{password: {SECRET}}}\nkafka: {{sasl_password: {SECRET}}}\n"
    config = parse(text + f"secrets: {{API_KEY: {SECRET}}}\n")
    assert config.secrets["API_KEY"] == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


# --- the `from` alias ----------------------------------------------------------------------


def test_from_alias() -> None:
    config = parse("""\
        smtp:
          from: "Herald <herald@example.org>"
        flows:
          post-user-registration:
            - action: send_email
              template: welcome
              from: support@example.org
              reply_to: "Help <help@example.org>"
        """)
    assert config.smtp.from_ == "Herald <herald@example.org>"
    (action,) = config.flows["post-user-registration"]
    assert isinstance(action, SendEmailAction)
    assert action.from_ == "support@example.org"
    by_name = SmtpConfig.model_validate({"from_": "x@example.com"})
    assert by_name.from_ == "x@example.com"


@pytest.mark.parametrize("value", ["nobody", "a@example.com, b@example.com", "Name <>"])
def test_bad_from_address(value: str) -> None:
    (problem,) = problems(f'smtp:\n  from: "{value}"\n')
    assert problem.startswith("herald.yaml:2: smtp.from: ")


# --- files ------------------------------------------------------------------------------------


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [f"{path}: config file not found"]


def test_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    (problem,) = info.value.problems
    assert problem.startswith(f"{tmp_path}: cannot read config file")


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "herald.yaml"
    path.write_text("smtp:\n  port: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems[0].startswith(f"{path}:2: smtp.port: ")


# --- built in Python ----------------------------------------------------------------------


def test_config_built_in_python_checks_flows_too() -> None:
    with pytest.raises(ValidationError, match="unknown trigger 'nope'"):
        Config.model_validate({"flows": {"nope": []}})
    config = Config.model_validate({"flows": {"post-login": [{"action": "deny"}]}})
    assert config.flows["post-login"][0].id == "deny-1"


def test_location_of_keys_for_later_checks() -> None:
    config = parse("""\
        smtp:
          port: 25
        flows:
          post-login:
            - action: send_email
              template: welcome
        """)
    assert config.location("smtp", "port") == "herald.yaml:2"
    assert config.location("flows", "post-login", 0, "template") == "herald.yaml:6"
    assert config.location("flows", "post-login", 0, "when") == "herald.yaml:5"
    assert config.location() == "herald.yaml:1"
    assert config == parse(
        "\n\n" + "smtp: {port: 25}\nflows: {post-login: [{action: send_email, template: welcome}]}"
    )
    copy = config.model_copy(update={"default_locale": "de"})
    assert copy.location("smtp", "port") == "herald.yaml:2"
    assert Config().location("smtp") == "<config>:1"


@pytest.mark.parametrize("locale", ["de", "pt_BR", "zh-Hant-TW", "en-US-u-ca-gregory"])
def test_default_locale_is_a_tag_by_the_renderers_rule(locale: str) -> None:
    assert parse_config(f"default_locale: {locale}\n", "c.yaml", {}).default_locale == locale
    assert normalize_locale(locale) is not None


@pytest.mark.parametrize("locale", ["d", "../de", "de-aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa"])
def test_default_locale_that_is_no_tag_is_refused(locale: str) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml:1: default_locale: "):
        parse_config(f"default_locale: {locale}\n", "c.yaml", {})
    assert normalize_locale(locale) is None
