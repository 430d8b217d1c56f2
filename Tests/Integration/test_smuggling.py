"""Ambiguous framing is refused with 400 and never reaches the upstream (request smuggling)."""
import pytest

from conftest import raw_request, status_of

ATTACKS = {
    "cl_and_te": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "differing_cl": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "cl_list": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "obs_fold": b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    "te_obs_fold": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bad_header_name": b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "header_name_colon_space": b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "nul_in_value": b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare_cr_in_value": b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "bad_chunk_size": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "te_gzip_only": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te_chunked_then_gzip": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te_xchunked": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "two_te_headers": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "negative_cl": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "plus_cl": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
    "missing_host": b"GET /api/bookings HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET /api/bookings HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "dot_segments": b"GET /api/../admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "encoded_dot_segments": b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute_form": b"GET http://evil.example/api/bookings HTTP/1.1\r\nHost: x\r\n\r\n",
    "http09": b"GET /api/bookings\r\n\r\n",
    # Outside the strict grammar the gateway's own request parser reads (llhttp accepted these).
    "chunk_extension": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
    "te_trailing_tab": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n",
    "duplicate_equal_cl": b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "webdav_method": b"PROPFIND /api/bookings HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect": b"CONNECT api.barberpro.com.ar:443 HTTP/1.1\r\nHost: api.barberpro.com.ar:443\r\n\r\n",
    "asterisk_form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw_utf8_target": "GET /api/caf\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "bare_lf_line_ends": b"GET /api/bookings HTTP/1.1\nHost: x\n\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_ambiguous_request_is_400_and_not_forwarded(name, gateway, upstream):
    before = upstream.stats()["requests"]
    out = raw_request(gateway.ports["plain"], ATTACKS[name], timeout=3)
    assert out, f"{name}: no response"
    assert status_of(out) == 400, out[:300]
    assert b'"code":"bad_request"' in out
    assert upstream.stats()["requests"] - before == 0, f"{name} reached the upstream"


def test_smuggled_second_request_never_reaches_upstream(gateway, upstream):
    # CL.TE classic: front end would use CL, back end TE; we must refuse, not forward.
    attack = (b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /api/echo-headers HTTP/1.1\r\nHost: x\r\n\r\n")
    before = upstream.stats()["requests"]
    out = raw_request(gateway.ports["public"], attack, tls=True, timeout=3)
    assert status_of(out) == 400
    assert upstream.stats()["requests"] == before


def test_over_tls_too(gateway, upstream):
    before = upstream.stats()["requests"]
    out = raw_request(gateway.ports["public"], ATTACKS["cl_and_te"], tls=True, timeout=3)
    assert status_of(out) == 400
    assert upstream.stats()["requests"] == before
