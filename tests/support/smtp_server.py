"""A real SMTP server for the tests: aiosmtpd (pinned in tests/support/requirements.txt) on
loopback, in one of the three security modes tokengate speaks, with AUTH when asked.

    python3 smtp_server.py --security none|starttls|tls [--cert F --key F] [--user U --password P]

Prints `listening PORT` once it accepts connections, then one JSON line per accepted message:
{"from": ..., "to": [...], "data": "<base64 of the raw message>"}. Stops when its standard
input closes (the test that started it ended), so it never outlives its test.
"""
import argparse
import asyncio
import base64
import json
import ssl
import sys
import warnings

# aiosmtpd warns about AUTH on an implicit-TLS listener it cannot see is TLS, and about its own
# deprecations; neither is news to the tests.
warnings.simplefilter("ignore")

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    async def handle_DATA(self, server, session, envelope):
        line = json.dumps(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "data": base64.b64encode(envelope.original_content or envelope.content).decode(),
            }
        )
        print(line, flush=True)
        return "250 OK queued"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--security", choices=["none", "starttls", "tls"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()

    tls = None
    if a.security != "none":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(a.cert, a.key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == a.user
            and auth_data.password.decode() == a.password
        )
        return AuthResult(success=ok)

    kwargs = {"hostname": "localhost", "timeout": 30}
    if a.user:
        # aiosmtpd knows of TLS only through STARTTLS; an implicit-TLS connection is one too.
        kwargs.update(
            auth_required=True,
            authenticator=authenticator,
            auth_require_tls=a.security == "starttls",
        )
    if a.security == "starttls":
        kwargs.update(tls_context=tls, require_starttls=True)

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Recorder(), **kwargs),
            host="127.0.0.1",
            port=0,
            ssl=tls if a.security == "tls" else None,
        )
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        # Until the test closes our standard input.
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
