"""RFC 9111 / 5861 / 9211 / 9213 rules of the cache policy, pure: no sockets, no clock."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.cache import policy as rfc
from gateway.cache.directives import (
    INVALID,
    age_value,
    http_date,
    parse_directives,
    parse_targeted,
    vary_names,
)
from gateway.cache.key import normalise_field, url_key, variant_id, vary_values
from gateway.config.model import RouteCache

NO_ROUTE = RouteCache()
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
T0 = http_date(DATE) or 0.0
FUTURE = "Thu, 18 Aug 2050 02:01:18 GMT"
# Not HTTP-dates (RFC 9110 §5.6.7), though email.utils reads each as 18 Aug 2050.
NOT_HTTP_DATES = (
    "Thu, 18 Aug 2050 02:01:18 +1000",   # numeric zone
    "Thu, 18 Aug 2050 02:01:18 UTC",     # UTC, not GMT
    "Thu, 18 Aug 50 02:01:18 GMT",       # two-digit year in the IMF form
    "Thu 18 Aug 2050 02:01:18 GMT",      # no comma
    "Thu, 18  Aug  2050 02:01:18 GMT",   # doubled spaces
    "Thu, 18-Aug-2050 02:01:18 GMT",     # dashes in the IMF form
    "Thu, 18 Aug 2050 02.01.18 GMT",     # dots in the time
    "Thu, 18 Aug 2050 2:01:18 GMT",      # one-digit hour
    "THU, 18 Aug 2050 02:01:18 GMT",     # case (HTTP-date is case-sensitive)
    "Thu, 18 Aug 2050 02:01:18",         # no zone
    "Thu, 31 Feb 2050 02:01:18 GMT",     # no such day
    "Thu, 18 Aug 2050 24:01:18 GMT",     # no such hour
)


def h(**fields: str) -> CIMultiDict[str]:
    return CIMultiDict((k.replace("_", "-"), v) for k, v in fields.items())


def storable(headers: CIMultiDict[str], request: CIMultiDict[str] | None = None,
             route: RouteCache = NO_ROUTE, status: int = 200) -> str | None:
    return rfc.not_storable_reason("GET", status, headers, request or h(), route)


# ---------------------------------------------------------------- §3 storing

def test_rfc9111_3_no_store_and_private_are_not_stored() -> None:
    assert storable(h(Cache_Control="no-store, max-age=60")) == "no-store"
    assert storable(h(Cache_Control='private="Set-Cookie", max-age=60')) == "private"
    assert storable(h(Cache_Control="max-age=60"), h(Cache_Control="no-store")) == "no-store"
    assert storable(h(Cache_Control="max-age=60")) is None


def test_rfc9111_3_only_get_and_final_complete_statuses() -> None:
    assert rfc.not_storable_reason("HEAD", 200, h(), h(), NO_ROUTE) == "method"
    for status in (206, 304, 100, 199, 600, 999):
        assert storable(h(Cache_Control="max-age=60"), status=status) == "status", status
    assert storable(h(), status=302) == "status"  # not heuristically cacheable, no freshness
    assert storable(h(Cache_Control="max-age=60"), status=302) is None
    assert storable(h(), status=404) is None


def test_rfc9111_3_any_final_status_with_explicit_freshness_is_storable() -> None:
    for status in (299, 303, 400, 401, 499, 500, 502, 503, 504, 599):
        for fields in (h(Cache_Control="max-age=60"), h(Cache_Control="s-maxage=60"),
                       h(Date=DATE, Expires="Sun, 06 Nov 1994 09:49:37 GMT"),
                       h(CDN_Cache_Control="max-age=60")):
            assert storable(fields, status=status) is None, (status, fields)
        assert rfc.freshness(status, h(Cache_Control="max-age=60"), NO_ROUTE, T0).lifetime == 60
        # No explicit freshness: not heuristically cacheable (§4.2.2), so nothing to store.
        assert storable(h(Date=DATE, Last_Modified="Sun, 30 Oct 1994 08:49:37 GMT"),
                        status=status) == "status"
        assert rfc.freshness(status, h(Date=DATE, Last_Modified="Sun, 30 Oct 1994 08:49:37 GMT"),
                             NO_ROUTE, T0).lifetime == 0
        assert rfc.freshness(status, h(), RouteCache(ttl=30), T0).lifetime == 0


def test_rfc9111_5_2_2_3_must_understand_stores_an_understood_status_despite_no_store() -> None:
    for status in (200, 203, 301, 404, 410, 500):
        assert storable(h(Cache_Control="must-understand, no-store, max-age=60"),
                        status=status) is None, status
    # A status this cache does not know the semantics of is not stored, no-store or not.
    for cc in ("must-understand, no-store, max-age=60", "must-understand, max-age=60"):
        assert storable(h(Cache_Control=cc), status=299) == "must-understand"
    # The request's no-store still binds (§5.2.1.5); private still applies (§5.2.2.7).
    assert storable(h(Cache_Control="must-understand, no-store, max-age=60"),
                    h(Cache_Control="no-store")) == "no-store"
    assert storable(h(Cache_Control="must-understand, private, max-age=60")) == "private"
    assert storable(h(Cache_Control="no-store, max-age=60")) == "no-store"


def test_rfc9111_3_5_authorization_needs_public_must_revalidate_or_s_maxage() -> None:
    auth = h(Authorization="Bearer t")
    assert storable(h(Cache_Control="max-age=60"), auth) == "authorization"
    for cc in ("public, max-age=60", "must-revalidate, max-age=60", "s-maxage=60"):
        assert storable(h(Cache_Control=cc), auth) is None


def test_rfc9111_3_set_cookie_only_when_the_route_allows() -> None:
    headers = h(Cache_Control="max-age=60", Set_Cookie="a=1")
    assert storable(headers) == "set-cookie"
    assert storable(headers, route=RouteCache(store_set_cookie=True)) is None


def test_rfc9111_4_1_vary_star_and_invalid_vary_are_not_stored() -> None:
    assert storable(h(Cache_Control="max-age=60", Vary="*")) == "vary"
    assert storable(h(Cache_Control="max-age=60", Vary="Accept, a b")) == "vary"
    assert vary_names(["Accept-Encoding, accept-language", "Accept-Encoding"]) == (
        "accept-encoding", "accept-language")


def test_rfc9213_2_1_targeted_field_replaces_cache_control_and_expires() -> None:
    headers = h(Cache_Control="no-store", CDN_Cache_Control="max-age=60")
    assert storable(headers) is None
    assert rfc.freshness(200, headers, NO_ROUTE, T0).lifetime == 60
    headers = h(Cache_Control="max-age=60", Surrogate_Control="no-store",
                CDN_Cache_Control="max-age=5")
    assert storable(headers) == "no-store"  # Surrogate-Control comes first for this cache
    # An invalid targeted field is ignored: Cache-Control governs again.
    headers = h(Cache_Control="max-age=7", CDN_Cache_Control="=garbage")
    assert rfc.freshness(200, headers, NO_ROUTE, T0).lifetime == 7
    headers = h(Date=DATE, Expires="Sun, 06 Nov 1994 09:49:37 GMT",
                Surrogate_Control="max-age=10+30")
    assert rfc.freshness(200, headers, NO_ROUTE, T0).lifetime == 10


def test_rfc9213_2_1_cdn_cache_control_not_a_dictionary_is_ignored_whole() -> None:
    # Not an RFC 8941 Dictionary, or a known directive with a value of the wrong type: the
    # field is ignored and Cache-Control governs (here: no-store).
    for value in ("max-age=10000, &&&&&", 'max-age="10000"', "max-age =100", "max-age= 100",
                  "MaX-aGe=3600", "max-age=-1", "max-age=1.5", "no-store=1", "public=?1;a=",
                  "no-cache=tok", "max-age=10000,", "max-age=(10000)", "max-age=10000;"):
        headers = h(CDN_Cache_Control=value, Cache_Control="no-store")
        assert parse_targeted([value]) is None, value
        assert storable(headers) == "no-store", value
        assert rfc.freshness(200, h(CDN_Cache_Control=value, Cache_Control="max-age=7"),
                             NO_ROUTE, T0).lifetime == 7, value
    # Valid Dictionaries govern: extensions, parameters, qualified no-cache, huge integers.
    for value, lifetime in (("foobar, max-age=3600", 3600), ("max-age=3600;x=1", 3600),
                            ('no-cache="Set-Cookie", max-age=5', 5),
                            ("max-age=99999999999", 2**31), ("max-age=1, max-age=9", 9)):
        headers = h(CDN_Cache_Control=value, Cache_Control="no-store")
        assert storable(headers) is None, value
        assert rfc.freshness(200, headers, NO_ROUTE, T0).lifetime == lifetime, value
    assert storable(h(CDN_Cache_Control="no-store", Cache_Control="max-age=60")) == "no-store"
    assert storable(h(CDN_Cache_Control="private", Cache_Control="max-age=60")) == "private"
    # Two field lines are one Dictionary (RFC 8941 §4.2).
    two = CIMultiDict([("CDN-Cache-Control", "max-age=60"), ("CDN-Cache-Control", "public")])
    assert rfc.cache_directives(two)[0].values == {"max-age": "60", "public": None}


# ---------------------------------------------------------------- §4.2 freshness

def test_rfc9111_4_2_1_s_maxage_over_max_age_over_expires() -> None:
    base = {"Date": DATE, "Expires": "Sun, 06 Nov 1994 08:50:37 GMT"}
    assert rfc.freshness(200, h(**base), NO_ROUTE, T0).lifetime == 60
    assert rfc.freshness(200, h(**base, Cache_Control="max-age=5"), NO_ROUTE, T0).lifetime == 5
    assert rfc.freshness(200, h(**base, Cache_Control="max-age=5, s-maxage=9"), NO_ROUTE,
                         T0).lifetime == 9


def test_rfc9111_4_2_1_invalid_or_conflicting_max_age_is_stale() -> None:
    for cc in ("max-age=abc", "max-age=-1", "max-age=5, max-age=6", "max-age"):
        assert rfc.freshness(200, h(Cache_Control=cc), NO_ROUTE, T0).lifetime == 0, cc
    assert parse_directives(["max-age=5, max-age=5"]).seconds("max-age") == 5
    assert parse_directives(['max-age="7"']).seconds("max-age") == 7  # quoted form tolerated
    assert parse_directives(["max-age=x"]).seconds("max-age") == INVALID


def test_rfc9111_1_2_2_huge_delta_seconds_are_capped_not_invalid() -> None:
    assert parse_directives(["max-age=99999999999999"]).seconds("max-age") == 2**31


def test_rfc9110_5_6_7_http_date_is_one_of_three_forms_and_nothing_else() -> None:
    for form in ("Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                 "Sun Nov  6 08:49:37 1994", "Sun Nov 06 08:49:37 1994"):
        assert http_date(form) == 784111777.0, form
    assert http_date(FUTURE) == 2544400878.0
    assert http_date("Thu, 31 Dec 1998 23:59:60 GMT") == 915148800.0  # a leap second
    for value in (*NOT_HTTP_DATES, "0", "", None, "Sun, 06 Nov 1994 08:49:37 GMT\x00",
                  "Sun, \uff106 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 0000 08:49:37 GMT",
                  "Sunday, 06-Nov-1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994 GMT"):
        assert http_date(value) is None, value


def test_rfc9110_5_6_7_rfc850_two_digit_year_at_most_fifty_years_ahead() -> None:
    now = http_date("Sat, 01 Jan 2026 00:00:00 GMT")
    assert http_date("Sunday, 18-Aug-76 02:01:18 GMT", now) == http_date(
        "Tue, 18 Aug 2076 02:01:18 GMT")
    assert http_date("Sunday, 18-Aug-77 02:01:18 GMT", now) == http_date(
        "Thu, 18 Aug 1977 02:01:18 GMT")
    later = http_date("Mon, 01 Jan 2080 00:00:00 GMT")
    assert http_date("Sunday, 18-Aug-10 02:01:18 GMT", later) == http_date(
        "Wed, 18 Aug 2110 02:01:18 GMT")


def test_rfc9111_5_3_expires_that_is_not_an_http_date_is_already_expired() -> None:
    fresh = rfc.freshness(200, h(Date=DATE, Expires=FUTURE), NO_ROUTE, T0)
    assert fresh.lifetime > 0
    for value in NOT_HTTP_DATES:
        headers = h(Date=DATE, Expires=value)
        assert rfc.freshness(200, headers, NO_ROUTE, T0).lifetime == 0, value
        assert rfc.freshness(200, h(Expires=value), NO_ROUTE, T0).lifetime == 0, value
        assert not rfc.worth_storing(rfc.freshness(200, headers, NO_ROUTE, T0), headers)


def test_rfc9110_13_1_3_if_modified_since_that_is_not_an_http_date_is_ignored() -> None:
    stored = h(Last_Modified=DATE)
    assert rfc.not_modified(h(If_Modified_Since=FUTURE), stored)
    for value in NOT_HTTP_DATES:
        assert not rfc.not_modified(h(If_Modified_Since=value), stored), value


def test_rfc9111_4_2_2_last_modified_or_date_not_an_http_date_gives_no_heuristic() -> None:
    lm = "Sun, 30 Oct 1994 08:49:37 GMT"
    assert rfc.freshness(200, h(Date=DATE, Last_Modified=lm), NO_ROUTE, T0).lifetime > 0
    bad_lm = "Sun, 30 Oct 1994 08:49:37 UTC"
    assert rfc.freshness(200, h(Date=DATE, Last_Modified=bad_lm), NO_ROUTE, T0).lifetime == 0
    # An invalid Date: the response time stands in for it (§4.2.3).
    three_days = "Thu, 03 Nov 1994 08:49:37 GMT"
    bad_date = rfc.freshness(200, h(Date="Sun, 06 Nov 1994 08:49:37 +0000",
                                    Last_Modified=three_days), NO_ROUTE, T0 + 86400)
    assert abs(bad_date.lifetime - 4 * 86400 * 0.1) < 1


def test_rfc9111_5_3_invalid_expires_is_in_the_past() -> None:
    for value in ("0", "garbage", ""):
        fresh = rfc.freshness(200, h(Date=DATE, Expires=value), NO_ROUTE, T0)
        assert fresh.lifetime == 0, value
    two = CIMultiDict([("Date", DATE), ("Expires", DATE), ("Expires", "Mon, 07 Nov 1994 08:49:37 GMT")])
    assert rfc.freshness(200, two, NO_ROUTE, T0).lifetime == 0


def test_rfc9111_4_2_2_heuristic_only_for_heuristic_statuses_and_with_last_modified() -> None:
    lm = "Sun, 30 Oct 1994 08:49:37 GMT"  # 7 days before Date
    fresh = rfc.freshness(200, h(Date=DATE, Last_Modified=lm), NO_ROUTE, T0)
    assert abs(fresh.lifetime - 7 * 86400 * 0.1) < 1
    assert rfc.freshness(302, h(Date=DATE, Last_Modified=lm), NO_ROUTE, T0).lifetime == 0
    assert rfc.freshness(200, h(Date=DATE), NO_ROUTE, T0).lifetime == 0
    old = "Sun, 06 Nov 1984 08:49:37 GMT"
    assert rfc.freshness(200, h(Date=DATE, Last_Modified=old), NO_ROUTE, T0).lifetime == 86400


def test_route_ttl_stands_in_for_missing_freshness_and_override_replaces_it() -> None:
    route = RouteCache(ttl=30)
    assert rfc.freshness(200, h(), route, T0).lifetime == 30
    assert rfc.freshness(200, h(Cache_Control="max-age=5"), route, T0).lifetime == 5
    override = RouteCache(ttl=30, override=True)
    assert rfc.freshness(200, h(Cache_Control="max-age=5"), override, T0).lifetime == 30
    assert rfc.freshness(500, h(), override, T0).lifetime == 0  # never makes a 500 fresh
    # ttl replaces the heuristic too (§4.2.2 applies only where no route ttl applies).
    lm = "Sun, 30 Oct 1994 08:49:37 GMT"
    assert rfc.freshness(200, h(Date=DATE, Last_Modified=lm), route, T0).lifetime == 30


def test_rfc9111_4_2_3_age_calculation_uses_age_date_and_delay() -> None:
    # Date says 10 s ago, Age says 3, the exchange took 2 s.
    headers = h(Date=DATE, Age="3")
    assert rfc.initial_age(headers, T0 + 8, T0 + 10) == 10  # apparent age wins
    assert rfc.initial_age(h(Date=DATE, Age="30"), T0 + 8, T0 + 10) == 32  # Age + delay wins
    assert rfc.initial_age(h(), T0, T0) == 0
    assert rfc.current_age(10, T0 + 10, T0 + 15) == 15
    # Date in the future (clock skew): apparent age is never negative.
    assert rfc.initial_age(h(Date=DATE), T0 - 100, T0 - 100) == 0


def test_rfc9111_5_1_invalid_age_is_ignored_and_first_member_used() -> None:
    assert age_value(["abc"]) == 0
    assert age_value(["-5"]) == 0
    assert age_value(["7, 9"]) == 7
    assert age_value([]) == 0


# ---------------------------------------------------------------- §4 reuse, RFC 5861

def test_rfc9111_4_2_fresh_stale_while_revalidate_then_revalidate() -> None:
    fresh = rfc.Freshness(10, stale_while_revalidate=5)
    assert rfc.evaluate(fresh, 9, h()) is rfc.Use.FRESH
    assert rfc.evaluate(fresh, 12, h()) is rfc.Use.STALE_WHILE_REVALIDATE
    assert rfc.evaluate(fresh, 16, h()) is rfc.Use.REVALIDATE


def test_rfc9111_5_2_1_request_no_cache_and_max_age_force_validation() -> None:
    fresh = rfc.Freshness(100)
    assert rfc.evaluate(fresh, 5, h(Cache_Control="no-cache")) is rfc.Use.REVALIDATE
    assert rfc.evaluate(fresh, 5, h(Pragma="no-cache")) is rfc.Use.REVALIDATE
    assert rfc.evaluate(fresh, 5, h(Cache_Control="max-age=3")) is rfc.Use.REVALIDATE
    assert rfc.evaluate(fresh, 5, h(Cache_Control="max-age=30")) is rfc.Use.FRESH


def test_rfc9111_5_2_2_4_no_cache_response_is_stored_but_always_revalidated() -> None:
    headers = h(Cache_Control="no-cache", ETag='"a"')
    assert storable(headers) is None
    fresh = rfc.freshness(200, headers, RouteCache(ttl=30, stale_if_error=60), T0)
    assert fresh.no_cache and fresh.stale_if_error == 0
    assert rfc.evaluate(fresh, 0, h()) is rfc.Use.REVALIDATE
    assert not rfc.worth_storing(rfc.freshness(200, h(Cache_Control="no-cache"), NO_ROUTE, T0),
                                 h(Cache_Control="no-cache"))


def test_rfc5861_response_directives_first_route_values_as_defaults() -> None:
    route = RouteCache(stale_while_revalidate=30, stale_if_error=300)
    own = rfc.freshness(200, h(Cache_Control="max-age=5, stale-while-revalidate=7"), route, T0)
    assert (own.stale_while_revalidate, own.stale_if_error) == (7, 300)
    none = rfc.freshness(200, h(Cache_Control="max-age=5"), route, T0)
    assert (none.stale_while_revalidate, none.stale_if_error) == (30, 300)
    bad = rfc.freshness(200, h(Cache_Control="max-age=5, stale-if-error=x"), route, T0)
    assert bad.stale_if_error == 0


def test_rfc9111_4_2_4_never_stale_with_must_revalidate_proxy_revalidate_or_s_maxage() -> None:
    route = RouteCache(stale_while_revalidate=30, stale_if_error=300)
    for cc in ("max-age=5, must-revalidate", "max-age=5, proxy-revalidate", "s-maxage=5",
               "max-age=5, stale-if-error=60, must-revalidate"):
        fresh = rfc.freshness(200, h(Cache_Control=cc), route, T0)
        assert (fresh.stale_while_revalidate, fresh.stale_if_error) == (0, 0), cc


def test_rfc5861_4_stale_if_error_window() -> None:
    fresh = rfc.Freshness(10, stale_if_error=20)
    assert rfc.stale_if_error_allows(fresh, 29)
    assert not rfc.stale_if_error_allows(fresh, 31)


# ---------------------------------------------------------------- §4.3 validation

def test_rfc9111_4_3_1_conditional_request_carries_the_stored_validators() -> None:
    stored = h(ETag='"x"', Last_Modified=DATE)
    assert rfc.conditional_headers(stored) == [("If-None-Match", '"x"'),
                                               ("If-Modified-Since", DATE)]
    assert rfc.conditional_headers(h()) == []


def test_rfc9111_4_3_2_client_validators_against_the_stored_response() -> None:
    stored = h(ETag='W/"x"', Last_Modified=DATE)
    assert rfc.not_modified(h(If_None_Match='"y", "x"'), stored)  # weak comparison
    assert rfc.not_modified(h(If_None_Match="*"), stored)
    assert not rfc.not_modified(h(If_None_Match='"y"'), stored)
    # If-None-Match present: If-Modified-Since is not looked at (RFC 9110 §13.2.2).
    assert not rfc.not_modified(h(If_None_Match='"y"', If_Modified_Since=DATE), stored)
    assert rfc.not_modified(h(If_Modified_Since=DATE), stored)
    assert not rfc.not_modified(h(If_Modified_Since="Sun, 06 Nov 1994 08:00:00 GMT"), stored)
    assert not rfc.not_modified(h(If_Modified_Since="garbage"), stored)


def test_rfc9111_4_3_4_freshen_replaces_fields_but_not_content_length() -> None:
    stored = [("Content-Length", "5"), ("ETag", '"x"'), ("Cache-Control", "max-age=1"),
              ("X-Old", "kept")]
    update = h(Cache_Control="max-age=60", Content_Length="0", X_New="added")
    merged = dict(rfc.freshen(stored, update))
    assert merged == {"Content-Length": "5", "ETag": '"x"', "Cache-Control": "max-age=60",
                      "X-Old": "kept", "X-New": "added"}


def test_rfc9111_4_3_4_a_304s_set_cookie_is_stored_only_where_the_route_stores_cookies() -> None:
    stored = [("ETag", '"x"'), ("Cache-Control", "max-age=1")]
    update = CIMultiDict([("Cache-Control", "max-age=60"), ("Set-Cookie", "session=alice")])
    assert [n for n, _ in rfc.freshen(stored, update)] == ["ETag", "Cache-Control"]
    assert ("Set-Cookie", "session=alice") in rfc.freshen(stored, update,
                                                          store_set_cookie=True)


def test_rfc9110_15_4_5_a_304_drops_content_fields() -> None:
    kept = rfc.not_modified_headers([("ETag", '"x"'), ("Content-Length", "5"),
                                     ("Content-Type", "text/plain"), ("Vary", "Accept")])
    assert kept == [("ETag", '"x"'), ("Vary", "Accept")]


# ---------------------------------------------------------------- §4.4 invalidation

def test_rfc9111_4_4_every_method_not_known_safe_invalidates() -> None:
    url = "http://shop.example/items/1"
    headers = h(Content_Location="/items/3")
    for method in ("M-SEARCH", "PURGE", "LINK", "UNLINK", "PROPPATCH", "POST"):
        assert rfc.invalidated_urls(method, 200, url, headers) == [
            url, "http://shop.example/items/3"], method
        assert rfc.invalidated_urls(method, 302, url, headers) != [], method
        assert rfc.invalidated_urls(method, 404, url, headers) == [], method
    for method in ("GET", "HEAD", "OPTIONS", "TRACE"):  # RFC 9110 §9.2.1
        assert rfc.invalidated_urls(method, 200, url, headers) == [], method


def test_rfc9111_4_4_unsafe_success_invalidates_target_and_same_origin_locations() -> None:
    url = "http://shop.example/items/1"
    headers = h(Location="/items/2", Content_Location="http://evil.example/items/1")
    assert rfc.invalidated_urls("POST", 201, url, headers) == [url,
                                                              "http://shop.example/items/2"]
    assert rfc.invalidated_urls("DELETE", 500, url, headers) == []
    assert rfc.invalidated_urls("GET", 200, url, headers) == []


# ---------------------------------------------------------------- §2 / §4.1 keys

def test_rfc9111_2_key_is_normalised_url_with_ignored_params_removed() -> None:
    ignore = frozenset({"utm_source"})
    assert url_key("HTTP://Shop.Example:80/a?b=2&utm_source=x&a=1&a=0", ignore) == \
        "http://shop.example/a?a=1&a=0&b=2"
    assert url_key("http://shop.example/a?utm_source=x", ignore) == "http://shop.example/a"
    assert url_key("http://shop.example/A") != url_key("http://shop.example/a")
    assert url_key("https://s.example:8443/") == "https://s.example:8443/"


def test_rfc9111_4_1_vary_values_normalised_and_absent_distinguished() -> None:
    names = ("accept-encoding",)
    one = vary_values(names, h(Accept_Encoding="gzip,  br"))
    two = vary_values(names, h(Accept_Encoding="gzip , br"))
    assert one == two == ("br,gzip",)
    assert vary_values(names, h()) == (None,)
    assert variant_id(names, (None,)) != variant_id(names, ("",))
    assert variant_id((), ()) == "-"


def test_rfc9110_12_5_negotiation_fields_are_unordered_case_insensitive_lists() -> None:
    same = [("accept-encoding", "gzip, br", "BR,gzip", "br ,  gzip,"),
            ("accept-language", "en-US, de;q=0.5", "de; q=0.5 ,en-us"),
            ("accept-charset", "utf-8, ISO-8859-1;q=0.5", "iso-8859-1;q=0.5,UTF-8"),
            ("accept", "text/html, application/json;q=0.9", "Application/JSON;Q=0.9,text/HTML")]
    for name, *values in same:
        assert len({normalise_field(name, v) for v in values}) == 1, values
        assert vary_values((name,), h(**{name.replace("-", "_"): values[0]})) == \
            vary_values((name,), h(**{name.replace("-", "_"): values[1]}))
    different = [("accept-encoding", "gzip", "br"),
                 ("accept", "a/b;v=A", "a/b;v=a"),           # parameter values keep case
                 ("accept", 'a/b;x="1,2"', 'a/b;x="2,1"'),   # quoted: not split, not sorted
                 ("x-custom", "a, b", "b, a"),               # order may matter elsewhere
                 ("x-custom", "A", "a")]
    for name, one, two in different:
        assert normalise_field(name, one) != normalise_field(name, two), (name, one, two)
    # Field lines of one field are one list (RFC 9110 §5.3).
    lines = CIMultiDict([("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")])
    assert vary_values(("accept-encoding",), lines) == vary_values(
        ("accept-encoding",), h(Accept_Encoding="gzip, br"))


# ---------------------------------------------------------------- what the client sees

def test_rfc9213_cdn_cache_control_sent_on_surrogate_control_and_tags_removed() -> None:
    route = RouteCache(browser_ttl=5, tags_header="Surrogate-Key")
    out = rfc.client_headers([("Cache-Control", "s-maxage=600"), ("Surrogate-Key", "a b"),
                              ("CDN-Cache-Control", "max-age=1"), ("Surrogate-Control", "x"),
                              ("Age", "100"), ("X-Kept", "1")], route, stored=True, age=12)
    assert dict(out) == {"CDN-Cache-Control": "max-age=1", "X-Kept": "1", "Age": "12",
                         "Cache-Control": "max-age=17"}
    for stored, age in ((False, None), (True, None), (True, 3.0)):
        assert "cdn-cache-control" not in rfc.dropped_fields(route, stored=stored,
                                                             age=age is not None)
        assert "surrogate-control" in rfc.dropped_fields(route, stored=stored,
                                                         age=age is not None)
    untouched = rfc.client_headers([("Cache-Control", "private")], route, stored=False)
    assert untouched["Cache-Control"] == "private"


def test_rfc9211_cache_status_members() -> None:
    assert rfc.cache_status(hit=True, ttl=12.7) == "gateway; hit; ttl=12"
    assert rfc.cache_status(hit=False, fwd="miss", stored=True) == "gateway; fwd=miss; stored"
    assert rfc.cache_status(hit=False, fwd="stale", fwd_status=503, ttl=-3,
                            detail="stale-if-error") == \
        "gateway; fwd=stale; fwd-status=503; ttl=-3; detail=stale-if-error"


def test_rfc9211_hit_status_is_cache_status_of_a_hit() -> None:
    for ttl in (3599.9, 12.7, 0.4, 0.0, -0.5, -3.2):
        assert rfc.hit_status(ttl) == rfc.cache_status(hit=True, ttl=ttl)


def test_rfc9111_4_evaluate_without_request_directives_follows_the_stored_response() -> None:
    # The shortcut for requests with neither Cache-Control nor Pragma gives what the full
    # evaluation gives with empty request directives.
    cases = [(rfc.Freshness(10), a) for a in (0, 9.9, 10, 11)] + \
        [(rfc.Freshness(10, stale_while_revalidate=5), a) for a in (9, 10, 14.9, 15)] + \
        [(rfc.Freshness(10, no_cache=True), 1)]
    for fresh, age in cases:
        assert rfc.evaluate(fresh, age, h()) is rfc.evaluate(fresh, age, h(Cache_Control=""))
    assert rfc.evaluate(rfc.Freshness(10), 1, h()) is rfc.Use.FRESH
    assert rfc.evaluate(rfc.Freshness(10, 5), 12, h()) is rfc.Use.STALE_WHILE_REVALIDATE
    assert rfc.evaluate(rfc.Freshness(10, no_cache=True), 1, h()) is rfc.Use.REVALIDATE


def test_rfc9211_2_2_fwd_request_when_only_the_request_forced_forwarding() -> None:
    usable = [rfc.Freshness(100), rfc.Freshness(10, stale_while_revalidate=50)]
    for fresh in usable:
        for request in (h(Cache_Control="no-cache"), h(Cache_Control="max-age=0"),
                        h(Pragma="no-cache")):
            assert rfc.evaluate(fresh, 20 if fresh.lifetime == 10 else 5,
                                request) is rfc.Use.REVALIDATE
        assert rfc.forward_reason(fresh, 5) == "request"
    # The stored response itself needed validation: stale, whatever the request said.
    assert rfc.forward_reason(rfc.Freshness(10), 11) == "stale"
    assert rfc.forward_reason(rfc.Freshness(100, no_cache=True), 1) == "stale"


def test_tags_from_the_route_header_space_or_comma_separated() -> None:
    route = RouteCache(tags_header="Surrogate-Key")
    assert rfc.tags_of(h(Surrogate_Key="product-42 prices, prices"), route) == (
        "product-42", "prices")
    assert rfc.tags_of(h(Surrogate_Key="a"), NO_ROUTE) == ()


def test_malformed_cache_control_never_raises() -> None:
    for junk in ('max-age="unterminated', ",,,", "=x", "a=b=c, max-age=5", "\x00\x7f",
                 "max-age=٣"):
        parsed = parse_directives([junk])
        rfc.freshness(200, h(Cache_Control=junk), NO_ROUTE, T0)
        rfc.not_storable_reason("GET", 200, h(Cache_Control=junk, Vary="\x00"), h(), NO_ROUTE)
        assert isinstance(parsed.values, dict)
    assert parse_directives(["max-age=٣"]).seconds("max-age") == INVALID
