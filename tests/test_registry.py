import pytest

from harness.errors import HarnessError
from harness.registry import Registry


def make():
    reg: Registry[object] = Registry("widget")
    reg.register("resnet20", aliases=("rn20",), default=True)(object())
    reg.register("resnet8")(object())
    reg.register("vgg16", default=False)(object())
    return reg


def test_lookup_alias_and_meta():
    reg = make()
    assert reg.resolve("rn20") == "resnet20"
    assert reg.get("rn20") is reg.get("resnet20")
    assert reg.meta("resnet20")["default"] is True
    assert "rn20" in reg and "nope" not in reg and len(reg) == 3


def test_unknown_name_suggests_close_matches():
    reg = make()
    with pytest.raises(HarnessError) as exc:
        reg.get("resnet2")
    msg = str(exc.value)
    assert msg.startswith("unknown widget 'resnet2'; did you mean 'resnet20'")
    assert "3 available" in msg and "\n" not in msg


def test_unknown_name_without_match_has_no_suggestion():
    with pytest.raises(HarnessError, match=r"^unknown widget 'zzzzzz' \(3 available"):
        make().get("zzzzzz")


def test_glob_listing_include_exclude_where():
    reg = make()
    assert reg.names() == ["resnet20", "resnet8", "vgg16"]
    assert reg.names("resnet*") == ["resnet20", "resnet8"]
    assert reg.names(["vgg*", "resnet8"]) == ["resnet8", "vgg16"]
    assert reg.names("*", exclude="resnet2*") == ["resnet8", "vgg16"]
    assert reg.names(where=lambda e: e.meta.get("default", False)) == ["resnet20"]


def test_duplicates_and_bad_names_raise():
    reg = make()
    obj = reg.get("resnet8")
    reg.add("resnet8", obj)  # re-registering the same object is idempotent
    with pytest.raises(ValueError, match="already registered"):
        reg.add("resnet8", object())
    with pytest.raises(ValueError, match="alias 'resnet8' is already taken"):
        reg.add("other", object(), aliases=("resnet8",))
    with pytest.raises(ValueError, match="invalid widget name"):
        reg.add("Bad Name", object())


def test_freeze_blocks_registration():
    reg = make()
    reg.freeze()
    with pytest.raises(ValueError, match="frozen"):
        reg.add("new", object())
    assert reg.get("resnet8") is not None


def test_meta_is_read_only():
    reg = make()
    with pytest.raises(TypeError):
        reg.meta("resnet20")["default"] = False
