"""`errand exchange` and `errand complete`: Errand for CI jobs.

    errand exchange --url https://errand.example --audience-for-oidc errand \\
        --audience https://deploy.example --scope deploy:write
    ...                                     # later steps use $ERRAND_TOKEN
    errand complete --url https://errand.example    # always-run step: the task's tokens die

`complete` takes the broker URL from --url or $ERRAND_URL, never from the state `exchange`
left in the (possibly shared) temporary folder, and trusts and removes only what `exchange`
created (errand_client.files).

Inside GitHub Actions `exchange` fetches the job's OIDC token itself (a fresh one per
attempt); in GitLab CI it reads the variable named by --id-token-var (the job's
`id_tokens:`). It never falls back to a static secret.

Output: stdout carries only what a shell would capture (the token with --output stdout, the
file path with --output file); everything else goes to stderr. In GitHub Actions the token is
masked (`::add-mask::`) before anything else is written.

Exit codes: 0 ok; 2 terminal error (bad request, denied, no OIDC token, unusable runner
environment); 3 retries exhausted (503 or connection errors on every attempt).

    context.py           Context (what a command touches outside itself) and the exit codes
    arguments.py         the command line, register() for errand's CLI, main()
    exchange_command.py  exchange: identity, exchange, mask, deliver, record the state
    complete_command.py  complete: the task's tokens, then only what exchange created"""

from errand_client.ci.arguments import (
    OUTPUTS,
    add_complete_arguments,
    add_exchange_arguments,
    build_parser,
    main,
    register,
)
from errand_client.ci.complete_command import cmd_complete, complete, complete_tokens
from errand_client.ci.context import EXIT_OK, EXIT_RETRIES_EXHAUSTED, EXIT_TERMINAL, Context
from errand_client.ci.exchange_command import STATE_VERSION, choose_provider, cmd_exchange, exchange

__all__ = [
    "EXIT_OK",
    "EXIT_RETRIES_EXHAUSTED",
    "EXIT_TERMINAL",
    "OUTPUTS",
    "STATE_VERSION",
    "Context",
    "add_complete_arguments",
    "add_exchange_arguments",
    "build_parser",
    "choose_provider",
    "cmd_complete",
    "cmd_exchange",
    "complete",
    "complete_tokens",
    "exchange",
    "main",
    "register",
]
