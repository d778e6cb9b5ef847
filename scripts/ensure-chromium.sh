#!/usr/bin/env bash
# The browser tests drive Debian's Chromium (/usr/bin/chromium). Install it when missing and we
# can (root with apt-get); otherwise say in one line what is missing and how to get it.
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ti-studio: installing chromium for the browser tests (apt-get)" >&2
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; then
        exit 0
    fi
fi
echo "ti-studio: /usr/bin/chromium is missing, so the browser tests (tests/browser, -m browser) will fail;" \
     "install it with: sudo apt-get install chromium" >&2
