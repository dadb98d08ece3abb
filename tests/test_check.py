"""`herald check` (README: Command line): every problem as one `path:line: message` line, exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from service.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No HERALD_* override or SUPPORT_URL from the caller's shell changes the outcome."""
    for name in list(os.environ):
        if name.upper().startswith("HERALD_") or name in ("SUPPORT_URL", "UNSET_VAR"):
            monkeypatch.delenv(name)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with one valid template, `hello`; new handler modules are
    forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / "templates/hello/subject.txt.j2", "Hello {{ user.name }}\n")
    write(tmp_path / "templates/hello/text.txt.j2", "Hi {{ user.name }},\n\nbye\n")
    modules = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if name.startswith("hk_"):
            del sys.modules[name]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text), encoding="utf-8")
    return path


def config(text: str) -> str:
    write(Path("herald.yaml"), text)
    return "herald.yaml"


def module(source: str) -> str:
    """A handler module in the working directory; returns its (unique) name."""
    name = f"hk_{uuid.uuid4().hex[:8]}"
    write(Path(f"{name}.py"), source)
    return name


def check(
    capsys: pytest.CaptureFixture[str], path: str, command: str = "check"
) -> tuple[int, str, list[str]]:
    """Exit code, stdout and stderr lines of `herald --config path check`."""
    try:
        main(["--config", path, command])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err.splitlines()


def problems(capsys: pytest.CaptureFixture[str], path: str) -> list[str]:
    code, out, lines = check(capsys, path)
    assert code == 2, lines
    assert out == ""
    for line in lines:
        assert re.match(r"^[^:\s]+:\d+: \S", line), line
    return lines


def one(found: list[str], pattern: str) -> str:
    """The single line matching `pattern` (a regex anchored at the start)."""
    matches = [line for line in found if re.match(pattern, line)]
    assert len(matches) == 1, (pattern, found)
    return matches[0]


# --- valid configs ------------------------------------------------------------------------


def test_shipped_config_is_valid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, err = check(capsys, "config/herald.yaml")
    assert (code, out, err) == (0, "config/herald.yaml: ok\n", [])


def test_a_valid_config_prints_one_ok_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config("""\
        secrets:
          GREETING: hi
        flows:
          post-login:
            - action: send_email
              template: hello
              when: secrets.GREETING == 'hi'
        """)
    assert check(capsys, path) == (0, "herald.yaml: ok\n", [])


def test_other_default_locale_needs_no_folder(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Base files are the default locale's text, whichever locale that is.
    write(work / "templates/hello/fr/subject.txt.j2", "Bonjour\n")
    path = config(
        "default_locale: de\nflows:\n  post-login: [{action: send_email, template: hello}]\n"
    )
    assert check(capsys, path)[0] == 0


# --- what load_config reports, through the command --------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp:\n  host: mail\n  prot: 25\n", r"herald.yaml:3: smtp.prot: unknown key$"),
        ("smtp:\n  port: many\n", r"herald.yaml:2: smtp.port: Input should be a valid integer"),
        (
            "flows:\n  post-logon: []\n",
            r"herald.yaml:2: flows.post-logon: unknown trigger 'post-logon' \(known: ",
        ),
        (
            "flows:\n  login-failed:\n    - {action: send_email, template: hello}\n"
            "    - {action: redirect, url: 'https://example.com'}\n",
            r"herald.yaml:4: flows.login-failed\[1\]: action 'redirect' is not allowed on "
            r"trigger 'login-failed' \(allowed: ",
        ),
        (
            "smtp:\n  host: mail\n  password: ${UNSET_VAR}\n",
            r"herald.yaml:3: smtp.password: environment variable UNSET_VAR is not set$",
        ),
    ],
    ids=["unknown-key", "wrong-type", "unknown-trigger", "action-not-allowed", "unset-var"],
)
def test_config_file_problems(
    work: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    assert re.match(expected, one(problems(capsys, config(text)), expected))


# --- templates ----------------------------------------------------------------------------


def test_missing_template_points_at_its_template_key(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config("""\
        flows:
          post-login:
            - id: greet
              action: send_email
              template: helo
        """)
    (line,) = problems(capsys, path)
    assert line == (
        "herald.yaml:5: flows.post-login[0].template: template 'helo' not found in templates "
        "(known: hello)"
    )


def test_missing_templates_dir_is_one_problem(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(
        "templates_dir: nowhere\nflows:\n  post-login: [{action: send_email, template: x}]\n"
    )
    (line,) = problems(capsys, path)
    assert line.startswith("herald.yaml:1: templates_dir: directory 'nowhere' not found")


def test_template_that_does_not_compile(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(work / "templates/hello/text.txt.j2", "Hi,\n{% if user.name %}\nno endif\n")
    (line,) = problems(capsys, config("flows: {}\n"))
    assert line.startswith("templates/hello/text.txt.j2:3: Unexpected end of template")


def test_unknown_filter_does_not_compile(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(work / "templates/hello/subject.txt.j2", "\n{{ user.name | shout }}\n")
    (line,) = problems(capsys, config("flows: {}\n"))
    assert re.match(r"templates/hello/subject.txt.j2:2: .*shout", line)


def test_template_without_a_required_base_file(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "templates/hello/text.txt.j2").unlink()
    write(work / "templates/hello/de/text.txt.j2", "Hallo\n")
    path = config("flows:\n  post-login: [{action: send_email, template: hello}]\n")
    (line,) = problems(capsys, path)
    assert line == "templates/hello/text.txt.j2:1: required template file is missing"


def test_misspelt_file_in_a_locale_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(work / "templates/hello/de/subject.txt.j2", "Hallo\n")
    write(work / "templates/hello/de/txt.txt.j2", "Hallo\n")
    (line,) = problems(capsys, config("flows: {}\n"))
    assert line.startswith("templates/hello/de/txt.txt.j2:1: unknown file, expected ")


@pytest.mark.parametrize(
    ("present", "missing"), [("text.txt.j2", "html.html.j2"), ("html.html.j2", "text.txt.j2")]
)
def test_locale_variant_overriding_one_body_only(
    work: Path, capsys: pytest.CaptureFixture[str], present: str, missing: str
) -> None:
    write(work / "templates/hello/html.html.j2", "<p>Hi</p>\n")
    write(work / f"templates/hello/de/{present}", "Hallo\n")
    (line,) = problems(capsys, config("flows: {}\n"))
    assert line == (
        f"templates/hello/de/{missing}:1: locale variant is missing: de overrides {present} "
        f"but not {missing}, so its email would mix two languages"
    )


def test_subject_only_variant_and_text_only_without_html_are_fine(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work / "templates/hello/fr/subject.txt.j2", "Bonjour\n")
    write(work / "templates/hello/de/text.txt.j2", "Hallo\n")  # the base has no HTML either
    assert check(capsys, config("flows: {}\n"))[0] == 0


def test_empty_or_misnamed_locale_folders(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "templates/hello/de").mkdir()
    write(work / "templates/hello/de.old/subject.txt.j2", "Hallo\n")
    write(work / "templates/hello/_partials/footer.txt.j2", "bye\n")  # not a variant
    found = problems(capsys, config("flows: {}\n"))
    assert found == [
        "templates/hello/de:1: locale folder without templates: its users get the default",
        "templates/hello/de.old:1: not a locale folder (like 'de' or 'pt-BR'): its files are "
        "unused",
    ]


# --- python handlers ----------------------------------------------------------------------


def handler_config(spec: str) -> str:
    return config(f"""\
        flows:
          post-login:
            - id: hook
              action: python
              timeout_s: 2
              handler: "{spec}"
        """)


def test_handler_module_that_does_not_import(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (line,) = problems(capsys, handler_config("hk_nowhere.hooks:on_login"))
    assert line.startswith(
        "herald.yaml:6: flows.post-login[0].handler: handler 'hk_nowhere.hooks:on_login': "
        "cannot import 'hk_nowhere.hooks'"
    )


@pytest.mark.parametrize(
    ("source", "function", "message"),
    [
        ("def on_login(event, api):\n    return (\n", "on_login", "cannot import"),
        ("raise RuntimeError('no config here')\n", "on_login", "no config here"),
        ("import sys\nsys.exit(3)\n", "on_login", "its module exits while being imported"),
        ("async def on_login(event, api):\n    pass\n", "on_logout", "has no function"),
        ("async def on_login(event):\n    pass\n", "on_login", "must take two arguments"),
    ],
    ids=["syntax-error", "raises", "exits", "no-function", "wrong-signature"],
)
def test_handler_that_does_not_load(
    work: Path, capsys: pytest.CaptureFixture[str], source: str, function: str, message: str
) -> None:
    name = module(source)
    (line,) = problems(capsys, handler_config(f"{name}:{function}"))
    assert line.startswith(f"herald.yaml:6: flows.post-login[0].handler: handler '{name}:")
    assert message in line


# --- secrets ------------------------------------------------------------------------------


def test_secret_used_in_a_template_but_not_defined(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        work / "templates/hello/text.txt.j2",
        """\
        Hi,
        {{ secrets.SUPPORT_URL }}
        {{ event.secrets.API_KEY }} {{ secrets["HEADER"] }}
        {{ secrets.get("FOOTER") }} {{ secrets.SUPPORT_URL }} {{ secrets.DEFINED }}
        """,
    )
    write(work / "templates/_layout/base.txt.j2", "\n{{ secrets.LAYOUT }}\n")
    path = config("""\
        secrets:
          DEFINED: x
        flows:
          post-login: [{action: send_email, template: hello}]
        """)
    suffix = "is used but not defined in secrets: (defined: DEFINED)"
    assert problems(capsys, path) == [
        f"templates/hello/text.txt.j2:2: secret 'SUPPORT_URL' {suffix}",
        f"templates/hello/text.txt.j2:3: secret 'API_KEY' {suffix}",
        f"templates/hello/text.txt.j2:3: secret 'HEADER' {suffix}",
        f"templates/hello/text.txt.j2:4: secret 'FOOTER' {suffix}",
        f"templates/_layout/base.txt.j2:2: secret 'LAYOUT' {suffix}",
    ]


def test_templates_no_flow_sends_are_not_held_to_the_secrets(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work / "templates/hello/text.txt.j2", "{{ secrets.ELSEWHERE }}\n")
    path = config("flows:\n  post-login: [{action: deny}]\n")
    assert check(capsys, path)[0] == 0


def test_secret_used_in_when_and_to(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config("""\
        secrets: {KNOWN: x}
        flows:
          post-login:
            - action: send_email
              template: hello
              when: event.secrets.FLAG == 'on' and secrets.KNOWN
              to: secrets.get('ADMIN_ADDRESS')
        """)
    assert problems(capsys, path) == [
        "herald.yaml:6: secret 'FLAG' is used but not defined in secrets: (defined: KNOWN)",
        "herald.yaml:7: secret 'ADMIN_ADDRESS' is used but not defined in secrets: "
        "(defined: KNOWN)",
    ]


def test_secret_used_in_a_handler(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = module("""\
        \"\"\"Handlers.\"\"\"


        async def other(event, api):
            return event.secrets.NOT_CALLED


        async def on_login(event, api):
            if event.secrets.PLAN == "gold":
                api.user.set_app_metadata("key", event.secrets["API_KEY"])
            await api.email.send("hello", data={"k": event.secrets.get("KNOWN")})
        """)
    write(work / "templates/hello/subject.txt.j2", "{{ secrets.IN_TEMPLATE }}\n")
    (work / "templates/unsent").mkdir()
    write(work / "templates/unsent/subject.txt.j2", "{{ secrets.UNSENT }}\n")
    write(work / "templates/unsent/text.txt.j2", "x\n")
    path = config(f"""\
        secrets: {{KNOWN: x}}
        flows:
          post-login:
            - action: python
              handler: "{name}:on_login"
        """)
    suffix = "is used but not defined in secrets: (defined: KNOWN)"
    assert problems(capsys, path) == [
        f"{name}.py:9: secret 'PLAN' {suffix}",
        f"{name}.py:10: secret 'API_KEY' {suffix}",
        f"templates/hello/subject.txt.j2:1: secret 'IN_TEMPLATE' {suffix}",
    ]


def test_handler_computing_the_template_name_holds_every_template(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = module("async def on_login(event, api):\n    await api.email.send(event.user.t)\n")
    write(work / "templates/hello/subject.txt.j2", "{{ secrets.IN_TEMPLATE }}\n")
    (line,) = problems(capsys, handler_config(f"{name}:on_login"))
    assert line.startswith("templates/hello/subject.txt.j2:1: secret 'IN_TEMPLATE' is used")


# --- all together -------------------------------------------------------------------------


def many_problems(work: Path) -> str:
    write(work / "templates/hello/text.txt.j2", "{{ secrets.MISSING }}\n{% endif %}\n")
    (work / "templates/hello/de").mkdir()
    return config("""\
        flows:
          post-login:
            - action: send_email
              template: nope
            - action: python
              handler: "hk_missing_module:run"
            - action: send_email
              template: hello
              when: event.secrets.FLAG
        """)


def test_several_problems_are_all_reported(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    found = problems(capsys, many_problems(work))
    assert [line.split(": ")[0] for line in found] == [
        "herald.yaml:4",
        "herald.yaml:6",
        "templates/hello/text.txt.j2:2",
        "templates/hello/de:1",
        "herald.yaml:9",
    ]
    # The template does not compile, so its secrets are not looked at: it says so first.
    assert "MISSING" not in "\n".join(found)


def test_config_problems_do_not_hide_the_checks_of_valid_actions(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(work / "templates/hello/html.html.j2", "<p>{{ secrets.HTML_ONLY }}</p>\n")
    path = config("""\
        smtp:
          prot: 25
        flows:
          post-change-password:
            - action: deny
              reason: closed
            - action: send_email
              template: nope
            - action: python
              handler: "hk_missing_module:run"
            - action: send_email
              template: hello
            - action: set_metadata
              when: event.user.email_verified and
        """)
    found = problems(capsys, path)
    one(found, r"herald\.yaml:2: smtp\.prot: unknown key$")
    one(found, r"herald\.yaml:5: flows\.post-change-password\[0\]: action 'deny' is not allowed")
    one(found, r"herald\.yaml:8: flows\.post-change-password\[1\]\.template: template 'nope'")
    one(found, r"herald\.yaml:10: flows\.post-change-password\[2\]\.handler: .*hk_missing_module")
    one(found, r"herald\.yaml:14: flows\.post-change-password\[4\]\.when: ")
    one(found, r"templates/hello/html\.html\.j2:1: secret 'HTML_ONLY' is used but not defined")
    assert len(found) == 6


def test_only_file_problems_when_the_templates_directory_itself_is_wrong(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows = "flows:\n  post-login: [{action: send_email, template: nope}]\n"
    path = config("templates_dir: ${UNSET_VAR}\n" + flows)
    assert problems(capsys, path) == [
        "herald.yaml:1: templates_dir: environment variable UNSET_VAR is not set"
    ]


def test_startup_runs_the_same_checks(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = many_problems(work)
    expected = problems(capsys, path)
    code, out, lines = check(capsys, path, command="run")
    assert (code, out, lines) == (2, "", expected)


def test_command_line_in_a_fresh_process(work: Path) -> None:
    path = many_problems(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "service", "--config", path, "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 5
    assert all(re.match(r"^[^:\s]+:\d+: ", line) for line in lines)
