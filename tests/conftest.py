"""Session-wide settings every test's Ray processes must agree on."""

import os

# A ~/.ray/auth_token on the machine turns Ray's token auth on for new clusters, and Ray caches the mode per
# process: tests that start clusters with auth disabled and tests that start them with the default would then
# disagree inside one pytest process ("Missing authorization header"). Every cluster the tests start is local.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
