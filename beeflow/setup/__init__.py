"""The admin setup page: which Bee Flow service this connector talks to, and the tenant states an
admin must act on (docs/ui.md, "Setup picker (beeflow/setup/)").

GET /setup (page), POST /setup (save + apply live + re-bootstrap), GET /setup/status,
POST /setup/test (probe); the tenant actions (POST /setup/verify-email-code,
/setup/resend-email-code, /setup/request-verification-code, /setup/apply-pairing-code,
/setup/rotate-tenant-key) live in setup.actions, the state they share in setup.common; the
routes in setup.routes, the status answer in setup.status, the page in setup.page. All
ADMIN, rate-limited per Nextcloud user. The saved choice lives in
${APP_PERSISTENT_STORAGE}/setup-config.json; BEEFLOW_API_BASE_URL in the environment locks it,
BEEFLOW_TENANT_KEY locks the tenant actions.
"""
