// A real OpenID Connect provider for the sign-in tests (panva's oidc-provider).
// Its development login page accepts any login name; the groups claim comes from
// OIDC_USERS, so tests decide who is a student, an instructor or an outsider.
//
//   OIDC_PORT=9100 OIDC_CLIENT_ID=gpuhub OIDC_CLIENT_SECRET=s OIDC_REDIRECT=http://.../hub/oauth_callback \
//   OIDC_USERS='{"alice": ["students", "course-ml101"]}' node provider.mjs
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT || 9100);
const users = JSON.parse(process.env.OIDC_USERS || '{}');
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: [process.env.OIDC_REDIRECT],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  scopes: ['openid', 'profile', 'email', 'groups'],
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email'], groups: ['groups'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.edu`, groups: users[id] || [] };
      },
    };
  },
  // A first-party client: no consent screen, as a university IdP would be set up.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => false },
  cookies: { keys: ['gpuhub-test-oidc-cookie-key'] },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
