from chatmaild.testkit.config import init_config

from cmdeploy.dnsrecords import RelayFacts, _normal, records, txt_value, zone_text

KEY = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 350


def facts(**kw):
    values = dict(ipv4=["192.0.2.7"], ipv6=["2001:db8::7"], dkim_public_key=KEY,
                  acme_account_url="https://acme.example/acct/1", sts_id="202611251200")  # fmt: skip
    values.update(kw)
    return RelayFacts(**values)


def test_long_txt_values_are_split_into_255_byte_strings():
    value = txt_value("a" * 600)
    assert value == '"' + "a" * 255 + '" "' + "a" * 255 + '" "' + "a" * 90 + '"'
    assert _normal("TXT", value) == "a" * 600


def test_zone_of_a_public_relay_has_required_and_recommended_records():
    config = init_config("chat.example.org")
    text = zone_text(config, facts())
    required, recommended = text.split("; Recommended")
    assert "chat.example.org.                        3600 IN A     192.0.2.7" in required
    assert "3600 IN AAAA  2001:db8::7" in required
    assert "IN MX    10 chat.example.org." in required
    assert (
        '_mta-sts.chat.example.org.               3600 IN TXT   "v=STSv1; id=202611251200"'
        in required
    )
    assert "mta-sts.chat.example.org." in required and "www.chat.example.org." in required
    assert f'"v=DKIM1;k=rsa;p={KEY[:236]}' in required
    assert (
        'IN CAA   0 issue "letsencrypt.org;accounturi=https://acme.example/acct/1"' in recommended
    )
    for name in ("_dmarc", "_adsp._domainkey", "_submission._tcp", "_imaps._tcp"):
        assert f"{name}.chat.example.org." in recommended


def test_self_signed_relay_needs_no_mta_sts_records():
    config = init_config("_relay1.lab")
    names = {r.name for r in records(config, facts(acme_account_url=None))}
    assert "mta-sts._relay1.lab." not in names and "_mta-sts._relay1.lab." not in names
    assert "www._relay1.lab." in names
