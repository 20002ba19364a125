"""milter.signals: each sig: token, the legitimate mail that must not get it, and garbage."""

from __future__ import annotations

import base64
import re
import socket
import time
import urllib.parse
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milter import signals
from milter.signals import (
    body_tokens,
    is_mixed_script,
    link_tokens,
    recipient_tokens,
    registrable,
    same_registrable,
    sender_tokens,
    skeleton,
    url_host,
)
from milter.text import message_text

# -- registrable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("Mail.Example.CO.UK.", "example.co.uk"),
        ("a.b.example.com.au", "example.com.au"),
        ("www.city.kawasaki.jp", "city.kawasaki.jp"),  # an exception rule of the list
        ("http://paypal.com@evil.ru/", "evil.ru"),
        ("https://WWW.Example.com:443/path?u=http://other.org/", "example.com"),
        ("//cdn.example.net/x.js", "example.net"),
        ("evil.ru:8080", "evil.ru"),
        ("user@sub.example.org", "example.org"),
        ("a..b.example.com", "example.com"),
        ("%77%77%77.paypal.com", "paypal.com"),
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai"),
        (
            "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\u3002com",
            "example.com",
        ),  # fullwidth letters and an ideographic full stop
        ("foo.blogspot.com", "blogspot.com"),  # ICANN suffixes only: free hosting is one domain
        ("localhost", "localhost"),
        ("co.uk", "co.uk"),
        ("1.2.3.4", "ip"),
        ("http://3232235777/", "ip"),
        ("0x7f.0.0.1", "ip"),
        ("[2001:db8::1]", "ip"),
        ("http://[2001:db8::1]:8080/", "ip"),
        ("[IPv6:2001:db8::1]", "ip"),
        ("2001:db8::1", "ip"),
        ("", ""),
        ("   ", ""),
        ("http://", ""),
    ],
)
def test_registrable(host: str, expected: str) -> None:
    assert registrable(host) == expected


def test_url_host() -> None:
    assert url_host("HTTP://User:Pw@Example.COM.:81/x") == "example.com"
    assert url_host("[::1]:25") == "[::1]"
    assert url_host("bücher.de") == "xn--bcher-kva.de"


def test_same_registrable() -> None:
    assert same_registrable("a@mail.example.co.uk", "news.example.co.uk")
    assert not same_registrable("a@example.com", "a@example.net")
    assert not same_registrable("", "")


def test_the_public_suffix_list_is_the_shipped_one_and_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network use")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    signals._psl.cache_clear()
    registrable.cache_clear()
    assert registrable("news.bbc.co.uk") == "bbc.co.uk"


# -- skeletons and scripts -----------------------------------------------------------------------


def test_skeleton_is_tr39s() -> None:
    assert skeleton("paypa1") == skeleton("paypal")
    assert skeleton("P\u0430ypal") == skeleton("Paypal")  # Cyrillic a
    assert skeleton("arnazon") == skeleton("amazon")  # rn and m
    assert skeleton("WaImart") == skeleton("Walmart")  # capital I and small l
    assert skeleton("\U0001d40f\U0001d41a\U0001d432") == "Pay"  # mathematical bold
    assert skeleton("plain") == "plain"
    assert skeleton("") == ""


def test_mixed_script() -> None:
    assert is_mixed_script("P\u0430ypal")
    assert is_mixed_script("\u0420ayPal")  # Cyrillic Er first
    assert is_mixed_script("ma\u03bfney")  # Greek omicron
    assert not is_mixed_script("Paypal")
    assert not is_mixed_script("Γιώργος Παπαδόπουλος")  # Greek, whole
    assert not is_mixed_script("Иван Петров (Ivan Petrov)")  # two scripts, separate words
    assert not is_mixed_script("山田太郎 Yamada Tarō")
    assert not is_mixed_script("Tシャツ")  # Latin with Japanese is ordinary
    assert not is_mixed_script("François Müller")
    assert not is_mixed_script("10μs, 4kΩ, Δt")  # Greek letters as units and quantities


# -- sender tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address", "subject"),
    [
        ("Amazon", "no-reply@amazon.co.uk", ""),
        ("Amazon.co.uk", "shipment-tracking@amazon.co.uk", "Your Amazon.co.uk order has dispatched"),
        ("Amazon Web Services", "aws-marketing@amazonaws.com", ""),
        ("PayPal", "service@paypal.de", "Sie haben eine Zahlung erhalten"),
        ("PayPal", "service@paypal-communication.com", ""),
        ("DHL Express", "noreply@dhl.com", "DHL On Demand Delivery"),
        ("Wells Fargo Online", "alerts@notify.wellsfargo.com", ""),
        ("Bank of America", "onlinebanking@ealerts.bankofamerica.com", ""),
        ("Microsoft account team", "account-security-noreply@accountprotection.microsoft.com", ""),
        ("Microsoft Outlook", "no-reply@outlook.com", ""),
        ("Facebook", "security@facebookmail.com", ""),
        ("Instagram", "no-reply@mail.instagram.com", ""),
        ("Google", "no-reply@accounts.google.com", "Security alert"),
        ("YouTube", "noreply@youtube.com", ""),
        ("Apple", "no_reply@email.apple.com", "Your receipt from Apple."),
        ("Crédit Agricole", "info@credit-agricole.fr", ""),
        ("T-Mobile", "t-mobile@t-mobile.com", ""),
        ("IRS", "irs.e-news@irs.gov", ""),
        ("USPS Informed Delivery", "USPSInformeddelivery@email.informeddelivery.usps.com", ""),
        ("Jane Doe via DocuSign", "dse@docusign.net", "Please DocuSign: contract.pdf"),
        ("Chase Miller via dev-list", "dev-list@lists.example.org", "Re: build broken"),
        ("Amazon Seller via Foo", "foo@googlegroups.com", ""),
        ("Chase Miller", "chase.miller@gmail.com", ""),  # a person's name that is a bank's too
        ("Apple Daily News", "news@appledaily.example", ""),
        ("Peter Norton", "peter@norton-family.example", ""),
        ("Γιώργος Παπαδόπουλος", "giorgos@example.gr", "Καλημέρα"),
        ("Иван Петров", "ivan@mail.ru", "Привет, как дела?"),
        ("山田太郎", "taro@example.co.jp", "会議の件"),
        ("John Smith", "john@example.com", "Re: [PATCH v2 3/7] mm: fix the page allocator"),
        ("john@example.com", "john@example.com", ""),
        ("", "", ""),
    ],
)
def test_legitimate_senders_get_no_tokens(name: str, address: str, subject: str) -> None:
    assert sender_tokens(name, address, subject) == []


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("PayPal Service", "info@secure-mail-xy.ru"),
        ("Amazon", "no-reply@amazon-support.top.example"),  # amazon in a subdomain only
        ("Netflix", "billing@netflix-account.example.com"),  # in a subdomain
        ("NETFLIX", "info@update-now.xyz"),
        ("Wells Fargo", "alerts@secure.example.com"),
        ("Bank of America", "alert@x.example"),
        ("Chase Online Banking", "chase@evil.example"),  # the weak brand beside generic words only
        ("Apple Support", "support@evil.example"),
        ("Credit Agricole", "info@evil.fr"),
        ("IRS", "refund@firstbank.example"),  # short keys must be a whole part of the label
        ("Microsoft 365", "admin@tenant.onmicrosoft.com"),  # anybody can send from there
        ("Google", "g@gmail.com"),
    ],
)
def test_brand_in_the_name_from_another_domain(name: str, address: str) -> None:
    assert "sig:name-brand-mismatch" in sender_tokens(name, address, "")


@pytest.mark.parametrize(
    "name",
    [
        "P\u0430ypal",  # Cyrillic a
        "\u0420\u0410YPAL",  # Cyrillic Er and A
        "WaImart",  # capital I for l
        "NETFLlX",  # small l for I
        "amaz0n",
        "PayPa1",
        "\U0001d40f\U0001d41a\U0001d432\U0001d40f\U0001d41a\U0001d425",  # mathematical bold
        "Ámazon",
    ],
)
def test_look_alike_brand_in_the_name(name: str) -> None:
    tokens = sender_tokens(name, "a@b.example", "")
    assert "sig:confusable-brand" in tokens
    assert "sig:name-brand-mismatch" in tokens


def test_look_alikes_count_before_via_too() -> None:
    # The brand check reads only the list's part of "X via List"; a look-alike is one anywhere.
    tokens = sender_tokens("\u13de\u0435dg\u0435r via dev-list", "dev-list@lists.example.org", "Verify")
    assert tokens == ["sig:confusable-brand", "sig:mixed-script"]


def test_look_alikes_count_from_the_brands_own_domain_too() -> None:
    assert sender_tokens("P\u0430yPal", "service@paypal.com", "") == [
        "sig:confusable-brand",
        "sig:mixed-script",
    ]


@pytest.mark.parametrize("name", ["LRS", "Lloyd", "Amazing", "Paypalooza", "Walmartian"])
def test_near_brands_are_not_look_alikes(name: str) -> None:
    assert "sig:confusable-brand" not in sender_tokens(name, "a@b.example", "")


def test_address_in_the_name() -> None:
    assert sender_tokens('"support@paypal.com"', "x@evil.ru", "") == ["sig:name-address-mismatch"]
    assert sender_tokens("paypal.com", "x@evil.ru", "") == [
        "sig:name-brand-mismatch",
        "sig:name-address-mismatch",
    ]
    # The address in the name is the sender's own, or the name is only a sentence with dots.
    assert sender_tokens("jane@example.com", "jane@mail.example.com", "") == []
    assert sender_tokens("J.R.R. Tolkien", "jrr@example.com", "") == []
    assert sender_tokens("Craig R.Hughes", "craig@example.com", "") == []  # .hughes is a TLD
    assert sender_tokens("Mr.Li", "li@example.com", "") == []  # and .li a country's
    assert sender_tokens("lists.example.org", "fleta@example.us", "") == ["sig:name-address-mismatch"]
    assert sender_tokens("Jane (jane@gmail.com)", "jane@corp.example", "") == ["sig:name-address-mismatch"]


def test_brand_in_the_subject() -> None:
    assert sender_tokens("Joe", "joe@x.example", "Your Netflix account is on hold") == [
        "sig:subject-brand-mismatch"
    ]
    assert sender_tokens("Netflix", "info@mailer.netflix.com", "Your Netflix account") == []
    # A brand that is also an everyday word does not count in a subject.
    assert sender_tokens("Joe", "joe@x.example", "Apple pie and a chase") == []
    assert sender_tokens("Joe", "joe@x.example", "Re: Wells Fargo statement") == [
        "sig:subject-brand-mismatch"
    ]
    tokens = sender_tokens("Joe", "joe@x.example", "Your P\u0430yP\u0430l account")
    assert tokens == ["sig:subject-brand-mismatch", "sig:confusable-brand", "sig:mixed-script"]


def test_mixed_script_in_the_subject_and_name() -> None:
    assert sender_tokens("Joe", "joe@x.example", "Fr\u0435e m\u043eney") == ["sig:mixed-script"]
    assert sender_tokens("J\u043ehn", "joe@x.example", "hello") == ["sig:mixed-script"]


# -- body ----------------------------------------------------------------------------------------


def test_body_tokens() -> None:
    assert body_tokens("Cl\u0456ck here to claim your pr\u0456ze") == ["sig:body-mixed-script"]
    assert body_tokens("plain ascii text") == []
    assert body_tokens("Привет! Как дела? Hello there, café crème.") == []
    assert body_tokens("Latency went from 10μs to 12μs.") == []


# -- recipient ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("jane@example.org", "jane@example.org, your mailbox is full"),
        ('"Jane Doe" <Jane.Doe@Example.org>', "Password for JANE.DOE@EXAMPLE.ORG expires today."),
        ("a@x.example, jane@example.org", "[Reminder] - jane@example.org"),
        # Chinese runs its words into the address; Latin letters would not.
        ("<jane@example.org>", "全新21套公司管理资料大全jane@example.org"),
    ],
)
def test_the_recipients_address_in_the_subject(to: str, subject: str) -> None:
    assert recipient_tokens(to, subject) == ["sig:recipient-in-subject"]


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("jane@example.org", "mail for jane"),
        ("jane@example.org", "write to bob@example.org about it"),
        ("jane@example.org", "maryjane@example.org.uk moved"),
        ("undisclosed-recipients:;", "a@b"),
        ("", "jane@example.org"),
        ("jane@example.org", ""),
    ],
)
def test_no_recipient_signal_without_the_address(to: str, subject: str) -> None:
    assert recipient_tokens(to, subject) == []


# -- links ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("href", "text", "token"),
    [
        ("https://evil.ru/login", "https://www.paypal.com/signin", "sig:link-text-domain-mismatch"),
        ("https://evil.ru/login", "www.paypal.com", "sig:link-text-domain-mismatch"),
        ("https://evil.ru/login", "paypal.com", "sig:link-text-domain-mismatch"),
        ("mailto:a@evil.ru", "support@paypal.com", "sig:link-text-domain-mismatch"),
        ("http://192.168.10.1/x", "", "sig:link-ip"),
        ("http://3232235777/", "", "sig:link-ip"),
        ("http://[2001:db8::1]/", "", "sig:link-ip"),
        ("https://xn--pypal-4ve.com/", "", "sig:link-punycode"),
        ("https://p\u0430ypal.com/", "", "sig:link-punycode"),
        ("http://bit.ly/3xYz", "", "sig:link-shortener"),
        ("tinyurl.com/abc", "", "sig:link-shortener"),  # a host from plain text
        ("http://paypal.com@evil.ru/", "", "sig:link-userinfo"),
        ("http://evil.ru:8080/", "", "sig:link-port"),
        ("https://paypal.com.secure-login.ru/", "", "sig:link-brand-host"),
        ("https://wellsfargo-login.evil.example/", "", "sig:link-brand-host"),
        ("https://amazon.qqttq.cn/", "", "sig:link-brand-host"),
        ("https://dhl.com.track-parcel.example/", "", "sig:link-brand-host"),
        ("https://dhl-express.example.net/", "", "sig:link-brand-host"),
        ("javascript:alert(1)", "Click", "sig:link-javascript"),
        ("data:text/html;base64,PHNjcmlwdD4=", "Open", "sig:link-data-uri"),
        ("https://ipfs.io/ipfs/QmYeh5kaRgdoP6skXdSoqoiq4mxH/index.html", "", "sig:link-ipfs"),
        ("https://gateway.example.net/ipns/k51qzi5uqu5d/", "", "sig:link-ipfs"),
        ("https://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylq.ipfs.dweb.link/", "", "sig:link-ipfs"),
        ("https://cloudflare-ipfs.com/ipfs/Qm/", "", "sig:link-ipfs"),
        ("https://login-secure-7.web.app/", "", "sig:link-free-host"),
        ("https://secure-docs.pages.dev/", "", "sig:link-free-host"),
        ("https://pub-1234.r2.dev/x.html", "", "sig:link-free-host"),
        ("https://firebasestorage.googleapis.com/v0/b/app/o/x.html", "", "sig:link-free-host"),
        ("https://acct7.blob.core.windows.net/$web/index.html", "", "sig:link-free-host"),
        ("https://example-com.translate.goog/?_x_tr_sl=auto", "", "sig:link-free-host"),
        ("netlify-phish.netlify.app", "", "sig:link-free-host"),  # a host from plain text
        ("https://www.google.com/url?q=https://target.example/login&sa=D", "", "sig:link-open-redirect"),
        ("https://www.google.de/amp/s/target.example/login", "", "sig:link-open-redirect"),
        ("https://www.bing.com/ck/a?!&&u=a1aHR0cHM6Ly90YXJnZXQuZXhhbXBsZS8", "", "sig:link-open-redirect"),
        ("https://l.facebook.com/l.php?u=https%3A%2F%2Ftarget.example%2F", "", "sig:link-open-redirect"),
        ("https://www.youtube.com/redirect?q=https://target.example/", "", "sig:link-open-redirect"),
    ],
)
def test_link_tokens(href: str, text: str, token: str) -> None:
    assert link_tokens([(href, text)], "example.com") == [token]


@pytest.mark.parametrize(
    ("href", "text"),
    [
        ("https://www.paypal.com/x", "www.paypal.com"),
        ("https://example.com/", "Visit example.com today"),  # a domain in a sentence, same site
        ("https://evil.example/", "Download report.pdf"),  # not a domain
        ("https://click.example.com/t/abc", "twitter.com/example"),  # the sender's own tracker
        ("https://u123.ct.sendgrid.net/ls/click?x", "www.shop.example"),  # an ESP's click tracker
        (
            "https://nam02.safelinks.protection.outlook.com/?url=https%3A%2F%2Fexample.org",
            "https://example.org",
        ),
        ("https://lists.example.org/", "https://nam06.safelinks.protection.outlook.com/?url=x"),
        ("https://googleprojectzero.blogspot.com/", ""),  # a brand inside a label is not a label
        ("https://slackware.pkgs.org/", ""),
        ("http://www.citi.umich.edu/projects/", ""),  # a short key alone as a label
        ("http://disney.go.com/", ""),  # the brand's own domain
        ("https://www.amazon.co.uk/gp/css", "amazon.co.uk"),
        ("https://docs.google.com/d/1", "https://docs.google.com/d/1"),
        ("http://example.com:80/", ""),
        ("https://example.com:443/", ""),
        ("data:image/png;base64,iVBORw0KGgo=", ""),
        ("cid:image001.png@01D0", ""),
        ("#top", "Back to top"),
        ("/relative/path", "example.org"),
        ("page.html", "example.org"),
        ("tel:+15551234567", "+1 555 123 4567"),
        ("www.example.com", ""),
        ("https://project.github.io/docs/", ""),  # free hosts that list talk links to every day
        ("https://someone.wordpress.com/2024/01/01/post/", ""),
        ("https://bucket.s3.amazonaws.com/build.tar.gz", ""),
        ("https://storage.googleapis.com/bucket/log.txt", ""),
        ("https://fonts.googleapis.com/css?family=Roboto", ""),
        ("https://www.dropbox.com/s/abc/file.pdf", ""),
        ("https://contoso.sharepoint.com/sites/team", ""),
        ("https://www.google.com/search?q=https://example.org", ""),  # a search, not a redirect
        ("https://www.google.com/url?q=mailto:a@example.org", ""),  # no web target
        ("https://ipfsnews.example/", ""),  # "ipfs" inside a word is not a gateway
    ],
)
def test_legitimate_links_get_no_tokens(href: str, text: str) -> None:
    assert link_tokens([(href, text)], "example.com") == []


def test_a_brand_in_the_subdomain_is_not_the_sites_domain_shown() -> None:
    assert link_tokens([("https://amazon.co.uk.example.com/", "https://example.com/")], "") == [
        "sig:link-brand-host"
    ]


def test_an_open_redirects_target_is_read_as_a_link() -> None:
    assert link_tokens([("https://www.google.com/url?q=http%3A%2F%2F192.0.2.7%2Flogin", "")], "") == [
        "sig:link-ip",
        "sig:link-open-redirect",
    ]
    amp = link_tokens([("https://www.google.com/amp/s/xn--pypal-4ve.com/signin", "Sign in")], "")
    assert amp == ["sig:link-open-redirect", "sig:link-punycode"]


def test_bings_base64_target_is_read() -> None:
    target = base64.urlsafe_b64encode(b"http://198.51.100.9/x").decode().rstrip("=")
    assert link_tokens([(f"https://www.bing.com/ck/a?!&&p=1&u=a1{target}&ntb=1", "")], "") == [
        "sig:link-ip",
        "sig:link-open-redirect",
    ]
    assert link_tokens([("https://www.bing.com/ck/a?!&&p=1&u=a1%%%&ntb=1", "")], "") == []


def test_a_redirect_with_many_fields_keeps_every_links_tokens() -> None:
    fields = "&".join(f"f{i}=1" for i in range(200))
    links = [(f"https://www.google.com/url?{fields}&q=http://192.0.2.7/", ""), ("http://bit.ly/x", "")]
    assert link_tokens(links, "") == ["sig:link-ip", "sig:link-open-redirect", "sig:link-shortener"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["", "https://www.google.com/url?q=", "https://ipfs.io/ipfs/"]))
def test_a_garbage_link_takes_no_other_links_tokens(garbage: str, prefix: str) -> None:
    # One link the code cannot read must not cost the message the tokens of the others.
    tokens = link_tokens([(prefix + garbage, garbage), ("http://bit.ly/x", "")], "")
    assert "sig:link-shortener" in tokens


def test_a_chain_of_redirects_is_followed_only_so_far() -> None:
    href = "http://192.0.2.7/"
    for _ in range(8):
        href = "https://www.google.com/url?q=" + urllib.parse.quote(href, safe="")
    assert link_tokens([(href, "")], "") == ["sig:link-open-redirect"]


def test_link_tokens_are_unique_and_sorted() -> None:
    links = [
        ("http://1.2.3.4/", ""),
        ("http://bit.ly/a", ""),
        ("http://5.6.7.8/", ""),
        ("http://bit.ly/b", ""),
    ]
    assert link_tokens(links, "") == ["sig:link-ip", "sig:link-shortener"]


# -- garbage and cost ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=300))
def test_never_raises_and_tokens_are_clean(name: str, address: str, subject: str) -> None:
    tokens = sender_tokens(name, address, subject) + link_tokens([(name, subject), (address, "")], address)
    tokens += body_tokens(subject) + recipient_tokens(address, subject)
    for token in tokens:
        assert token.startswith("sig:")
        assert token == token.lower()
        assert "".join(token.split()) == token
        assert len(token) <= 40
    assert isinstance(registrable(name), str)
    assert isinstance(skeleton(subject), str)


@pytest.mark.parametrize(
    "text",
    [
        "\x00\udcff\ud800",
        "xn--",
        "xn--zz.com",
        "[",
        "]]@[[",
        ":" * 50,
        "." * 300,
        "a" * 5000,
        "http://" + "a." * 200,
    ],
)
def test_odd_hosts(text: str) -> None:
    assert isinstance(registrable(text), str)
    assert isinstance(link_tokens([(text, text)], text), list)
    assert isinstance(sender_tokens(text, text, text), list)


def test_cost_on_a_typical_message_is_a_small_share_of_message_text() -> None:
    """The signals are a part of message->text; their budget is about a quarter of it (50 of the
    200-odd µs, bench/bench_model.py). Both are timed here in the same run, alternately, the best
    of several rounds each, and compared as a ratio: a busy machine slows both alike."""
    name, address, subject = (
        "Jane Doe",
        "jane.doe@example.com",
        "Re: the meeting notes from Tuesday, and a question",
    )
    links = [(f"https://www.example.org/page/{i}", "Read more") for i in range(10)] + [("example.net", "")]
    body = "Hello Jane, thanks for the notes. " * 50
    anchors = "".join(f'<a href="{href}">{shown}</a> ' for href, shown in links[:-1])
    raw = (
        f"From: {name} <{address}>\r\nSubject: {subject}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f"<p>{body}</p><p>{anchors} example.net</p>\r\n"
    ).encode()

    def signals_once() -> None:
        sender_tokens(name, address, subject)
        link_tokens(links, address)
        body_tokens(body)

    def best(work: Callable[[], object], runs: int = 100) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            work()
        return (time.perf_counter() - start) / runs

    signals_once()  # warm the caches both use
    message_text(raw)
    rounds = [(best(signals_once), best(lambda: message_text(raw))) for _ in range(5)]
    ratio = min(signal for signal, _ in rounds) / min(text for _, text in rounds)
    assert ratio < 0.6, rounds


# What signals.invisible_tokens looked for with one look-around pattern, before it looked for the
# runs of invisible characters alone and tested their neighbours.
_LOOKAROUND = re.compile(
    r"(?<=[^\W\d_])[\u00ad\u034f\u180e\u200b\u2060-\u2064\ufe00-\ufe0f\ufeff\U000e0001\U000e0020-\U000e007f]+"
    r"(?=[^\W\d_])"
)
_SPLIT_PIECES = st.sampled_from(
    [
        *"aZé_9٣²ß中 .-",
        "\u00ad",
        "\u034f",
        "\u180e",
        "\u200b",
        "\u2060",
        "\u2064",
        "\ufeff",
        "\ufe0f",
        "\U000e0061",
        "\u202a",
        "\u200d",
        "\u0301",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_SPLIT_PIECES, max_size=12).map("".join), st.lists(_SPLIT_PIECES, max_size=12).map("".join))
def test_invisible_in_word_is_the_lookaround_pattern(subject: str, body: str) -> None:
    found = any(_LOOKAROUND.search(text) for text in (subject, body))
    assert signals.invisible_tokens(subject, body) == (["sig:invisible-in-word"] if found else [])
