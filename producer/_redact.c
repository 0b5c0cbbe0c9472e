/* Credential redaction in payload prefixes, in place, called through ctypes (no Python API used).
 *
 * Secret bytes are replaced by '*' (lengths never change, nothing past a row's valid bytes is read
 * or written). Rules, each over the whole prefix (a body may start a TCP segment of its own):
 *  - HTTP/2 (and gRPC): the header blocks of HEADERS, CONTINUATION and PUSH_PROMISE frames;
 *  - header lines whose name is a credential header (by name or by its ending: ...-Token, ...-Key
 *    of an API, ...-Secret, Cookie, Authorization, ...), to the end of the line and its folds;
 *    a prefix that begins inside a header value (the rest of a long Cookie) to the end of its
 *    first line;
 *  - credential names wherever they sit: query and form fields (name=value, also after '#' and
 *    '"'), JSON members at any depth (string, scalar or array values), multipart fields; names
 *    are compared after percent-decoding, taking the last [...] of a bracketed name, without
 *    regard to case or to '_', '-', '.' (accessToken = access_token = ACCESS-TOKEN);
 *  - URL userinfo (scheme://user:PASSWORD@host);
 *  - values by their shape, under any name: JWTs, AWS access key ids, GitHub, GitLab, Slack and
 *    Stripe tokens, Google API keys, PEM private-key blocks, long random tokens in a request
 *    line's path.
 * No rule keeps state across the prefix that one stray byte could flip: each match is judged
 * from the bytes around it. */
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define KEEP_HTTP2_HEADERS 1 /* flags: leave HTTP/2 header blocks as they are */
#define MAX_NAME 64	     /* the longest name judged, after decoding */
#define MAX_RAW_NAME 192     /* the longest name as written (percent-encoded) */

/* Character classes, one bit each (generated: see the names below). */
enum { C_TCHAR = 1, C_NAME = 2, C_B64URL = 4, C_ALNUM = 8, C_SEP = 16, C_WS = 32, C_PRINT = 64, C_PATHEND = 128 };
static const uint8_t CLS[256] = {
	  0,   0,   0,   0,   0,   0,   0,   0,   0,  96, 160,   0,   0, 160,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	240,  65,  64, 193,  65,  67,  65,  65,  64,  64,  65,  65,  64,  87,  83, 192,
	 79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  64, 192,  64,  64,  64, 192,
	 64,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,
	 79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  66,  64,  66,  65,  87,
	 65,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,
	 79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  79,  64,  65,  64,  65,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
	  0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,   0,
};

static inline uint8_t lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static inline int is_alnum(uint8_t c)
{
	return CLS[c] & C_ALNUM;
}

static inline int is_sep(uint8_t c)
{
	return CLS[c] & C_SEP;
}

static inline int is_ws(uint8_t c)
{
	return CLS[c] & C_WS;
}

/* RFC 9110 token characters: what a header name is made of. */
static inline int tchar(uint8_t c)
{
	return CLS[c] & C_TCHAR;
}

/* Characters of a form or query name as written: name[sub], percent escapes. */
static inline int name_char(uint8_t c)
{
	return CLS[c] & C_NAME;
}

static inline int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = lower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Does p[0..len) start with the lower-case word w (case-insensitively)? */
static int starts_with(const uint8_t *p, int64_t len, const char *w)
{
	int64_t i = 0;
	for (; w[i]; i++)
		if (i >= len || lower(p[i]) != (uint8_t)w[i])
			return 0;
	return 1;
}

/* A name as it is compared: percent-decoded, the last non-empty [...] of a bracketed name
 * (user[password] -> password, token[] -> token), lower case, separators dropped. Writes at most
 * MAX_NAME bytes to out; returns the length, or -1 when it is no name (empty, too long). */
static int canon(const uint8_t *p, int64_t len, uint8_t *out)
{
	uint8_t dec[MAX_RAW_NAME];
	int64_t n = 0;
	if (len < 1 || len > MAX_RAW_NAME)
		return -1;
	int k = 0;
	for (int64_t i = 0; i < len; i++) { /* most names: no escapes, no brackets */
		uint8_t c = p[i];
		if (c == '%' || c == '[' || c == ']') {
			k = -1;
			break;
		}
		if (is_sep(c))
			continue;
		if (k == MAX_NAME)
			return -1;
		out[k++] = lower(c);
	}
	if (k >= 0)
		return k ? k : -1;
	for (int64_t i = 0; i < len; i++) {
		uint8_t c = p[i];
		if (c == '%' && i + 2 < len && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
			c = (uint8_t)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
			i += 2;
		}
		dec[n++] = c;
	}
	int64_t s = 0, e = n;
	/* bracketed: the last [...] that is not empty; trailing [] dropped */
	while (e > s && dec[e - 1] == ']') {
		int64_t o = e - 1;
		while (o > s && dec[o - 1] != '[')
			o--;
		if (o == s)
			break; /* no '[': a name ending in ']' */
		if (o == e - 1) {  /* "[]" */
			e = o - 1;
			continue;
		}
		s = o, e = e - 1;
		break;
	}
	k = 0;
	for (int64_t i = s; i < e; i++) {
		uint8_t c = dec[i];
		if (is_sep(c))
			continue;
		if (k == MAX_NAME)
			return -1;
		out[k++] = lower(c);
	}
	return k ? k : -1;
}

#define NAME(w) { w, sizeof(w) - 1 }
struct word {
	const char *w;
	int len;
};
/* Credential names, canonical (see canon; docs/operations.md lists them), by first letter: each
 * after its length byte. */
static const char *const NAMES_BY_FIRST[26] = {
	['a' - 'a'] = "\x04" "auth\x06" "apikey\x08" "apitoken\x09" "authtoken\x09" "accesskey\x09" "assertion\x0b" "accesstoken\x0d" "authorization\x12" "awssecretaccesskey",
	['b' - 'a'] = "\x06" "bearer",
	['c' - 'a'] = "\x06" "cookie\x09" "csrftoken\x0a" "credential\x0b" "credentials\x0c" "clientsecret\x0f" "clientassertion\x13" "csrfmiddlewaretoken",
	['i' - 'a'] = "\x07" "idtoken",
	['j' - 'a'] = "\x03" "jwt",
	['k' - 'a'] = "\x03" "key",
	['o' - 'a'] = "\x0a" "oauthtoken",
	['p' - 'a'] = "\x03" "pwd\x04" "pass\x06" "passwd\x08" "password\x0a" "privatekey\x0a" "passphrase",
	['r' - 'a'] = "\x0c" "refreshtoken",
	['s' - 'a'] = "\x03" "sig\x06" "secret\x07" "session\x09" "secretkey\x09" "signature\x09" "sessionid\x0c" "sessiontoken\x0c" "samlresponse\x0d" "securitytoken\x0f" "secretaccesskey\x0f" "subscriptionkey",
	['t' - 'a'] = "\x05" "token",
	['x' - 'a'] = "\x09" "xsrftoken\x0d" "xamzsignature\x0e" "xamzcredential\x0e" "xgoogsignature\x0f" "xgoogcredential\x11" "xamzsecuritytoken",
};

/* Names that are credentials only as query or form fields (an OAuth callback's code), not as
 * JSON members (where "code" is mostly an error code). */
static const struct word QUERY_ONLY_NAMES[] = { NAME("code"), { 0, 0 } };
#undef NAME

static int in_names(const uint8_t *c, int len)
{
	if (c[0] < 'a' || c[0] > 'z')
		return 0;
	for (const char *w = NAMES_BY_FIRST[c[0] - 'a']; w && *w; w += 1 + *w)
		if (*w == len && memcmp(w + 1, c, (size_t)len) == 0)
			return 1;
	return 0;
}

static int in_words(const uint8_t *c, int len, const struct word *ws)
{
	for (int k = 0; ws[k].w; k++)
		if (ws[k].len == len && (uint8_t)ws[k].w[0] == c[0] && memcmp(c, ws[k].w, (size_t)len) == 0)
			return 1;
	return 0;
}

/* extra: more names, each ended by a NUL, the list ended by an empty name (or a null pointer);
 * compared in canonical form as well. */
static int in_extra(const uint8_t *c, int len, const char *extra)
{
	for (const char *w = extra; w && *w; w += strlen(w) + 1) {
		int k = 0;
		for (const char *x = w; *x; x++) {
			uint8_t b = lower((uint8_t)*x);
			if (is_sep(b))
				continue;
			if (k >= len || c[k] != b)
				goto next;
			k++;
		}
		if (k == len)
			return 1;
next:;
	}
	return 0;
}

/* Is p[0..len) a credential name? query: as a query or form field. */

static inline int ends(const uint8_t *c, int n, const char *w, int l)
{
	if (l > n)
		return 0;
	for (int i = 1; i <= l; i++)
		if (c[n - i] != (uint8_t)w[l - i])
			return 0;
	return 1;
}

#define ENDS(w) ends(c, n, w, (int)sizeof(w) - 1)
#define IS(w) (n == (int)sizeof(w) - 1 && ENDS(w))

/* Header names (canonical) that carry credentials: those ending in token, api key, secret,
 * password, signature, credential(s), session id, authorization, cookie, subscription key,
 * access key, private key, jwt or assertion (X-Vault-Token, Private-Token, X-Goog-Api-Key,
 * Ocp-Apim-Subscription-Key, Set-Cookie, Proxy-Authorization...), and a few whole names. */
static int secret_header_name(const uint8_t *c, int n)
{
	switch (c[n - 1]) {
	case 'n':
		return ENDS("token") || ENDS("authorization") || ENDS("assertion");
	case 'y':
		return ENDS("apikey") || ENDS("subscriptionkey") || ENDS("accesskey") || ENDS("privatekey") ||
		       ENDS("authkey") || ENDS("functionskey") || IS("xamznoidcidentity");
	case 't':
		return ENDS("secret") || ENDS("jwt");
	case 'd':
		return ENDS("password") || ENDS("passwd") || ENDS("sessionid");
	case 'e':
		return ENDS("signature") || ENDS("cookie");
	case 'l':
		return ENDS("credential");
	case 's':
		return ENDS("credentials");
	case 'a':
		return IS("xamznoidcdata");
	case 'h':
		return IS("auth") || IS("xauth");
	}
	return 0;
}
#undef ENDS
#undef IS

/* Does the name hold the word w, followed by nothing, digits or a word that keeps it a credential
 * (old_password, password_confirmation, new_password1, app_secret, secret_value) rather than
 * describing one (passwordless, password_expires_at, client_secret_expires_at)? */
static int holds(const uint8_t *c, int n, const char *w)
{
	static const char *const KEEP[] = { "confirmation", "confirm", "again", "repeat", "check", "value", "hash",
					     "plain", "text", "b64", "base64", 0 };
	int l = (int)strlen(w);
	for (int i = 0; i + l <= n; i++) {
		if (c[i] != (uint8_t)w[0] || memcmp(c + i, w, (size_t)l) != 0)
			continue;
		int r = i + l;
		while (r < n && c[r] >= '0' && c[r] <= '9')
			r++;
		if (r == n)
			return 1;
		for (int k = 0; KEEP[k]; k++)
			if ((int)strlen(KEEP[k]) == n - r && memcmp(c + r, KEEP[k], (size_t)(n - r)) == 0)
				return 1;
	}
	return 0;
}

/* Is p[0..len) a credential name? One of the list, or the names you add; or one that ends as a
 * credential header's does (access_token, aws_session_token, oauth_token_secret, x-api-key,
 * Input.Password, new_password1: digits at the end aside); or one that holds password, passwd or
 * secret (see holds). query: as a query or form field (the OAuth code). */
static int secret_name(const uint8_t *p, int64_t len, const char *extra, int query)
{
	uint8_t c[MAX_NAME];
	int n = canon(p, len, c);
	if (n < 0)
		return 0;
	if (in_names(c, n) || (query && in_words(c, n, QUERY_ONLY_NAMES)) || in_extra(c, n, extra))
		return 1;
	int m = n;
	while (m > 1 && c[m - 1] >= '0' && c[m - 1] <= '9')
		m--;
	return secret_header_name(c, m) || holds(c, n, "password") || holds(c, n, "passwd") || holds(c, n, "secret");
}

/* The length of a header name at p (token characters up to a ':'), or 0 when the line is not a
 * header; *secret: whether it names a credential header. One pass: the name is put in canonical
 * form as it is read. */
static int64_t header_line(const uint8_t *p, int64_t len, const char *extra, int *secret)
{
	uint8_t c[MAX_NAME];
	int n = 0, escaped = 0;
	int64_t i = 0;
	*secret = 0;
	if (!(CLS[p[0]] & C_ALNUM))
		return 0; /* a header name starts with a letter (or a digit) */
	const uint8_t *colon = memchr(p, ':', (size_t)(len < MAX_NAME + 1 ? len : MAX_NAME + 1));
	if (!colon)
		return 0; /* most lines that are no header: found without a byte-by-byte walk */
	int64_t k = (int64_t)(colon - p);
	for (; i < k; i++) {
		uint8_t b = p[i];
		if (!tchar(b))
			return 0;
		escaped |= b == '%';
		if (!is_sep(b) && n < MAX_NAME)
			c[n++] = lower(b);
	}
	if (escaped)
		n = canon(p, i, c);
	*secret = n > 0 && (secret_header_name(c, n) || in_extra(c, n, extra));
	return i;
}

/* Replace p[from..to) by '*' (within len); returns 1 if a byte changed. */
/* Where the row's first line ends (set by redact_one): what is judged of that line as a whole
 * (a request line, a continued header value) can change when any byte of it is starred. */
static _Thread_local int64_t first_line_end;

static int stars(uint8_t *p, int64_t from, int64_t to, int64_t len)
{
	int changed = 0;
	if (to > len)
		to = len;
	for (int64_t i = from; i < to && i < first_line_end; i++)
		if (p[i] != '*')
			changed = 3;
	uint8_t prev = from > 0 ? p[from - 1] : 0;
	for (int64_t i = from; i < to; i++) {
		uint8_t c = p[i];
		if (c != '*') {
			/* 2: a byte other than a letter, a digit or a lone token character was replaced, or
			 * any byte of the first line: the rules read structure from those (quotes, '=', '&',
			 * line ends, runs of dashes (a PEM marker, a multipart boundary), control bytes, a
			 * request line's "HTTP/"...), so another pass may judge the row differently. A token's
			 * own '.', '_', '~', '+', '%' and a dash between two other bytes are taken as letters
			 * (what credential values hold: JWTs, base64, "s3cr3t-value"); not '/', which ends a
			 * header name where a starred one ('*' is a token character) would not */
			int plain = (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z') || c == '.' || c == '_' ||
				    c == '~' || c == '+' || c == '%' ||
				    (c == '-' && prev != '-' && (i + 1 >= len || p[i + 1] != '-'));
			p[i] = '*';
			changed |= plain ? 1 : 3;
		}
		prev = c;
	}
	return changed;
}

/* The position of the quote that closes a JSON string starting at from (a quote after an odd
 * number of backslashes is escaped), or len when the prefix ends first. memchr does the walking:
 * binary payloads are full of stray quote bytes. */
static int64_t closing_quote(const uint8_t *p, int64_t from, int64_t len)
{
	for (int64_t at = from; at < len;) {
		const uint8_t *q = memchr(p + at, '"', (size_t)(len - at));
		if (!q)
			return len;
		int64_t c = (int64_t)(q - p), b = c;
		while (b > from && p[b - 1] == '\\')
			b--;
		if ((c - b) % 2 == 0)
			return c;
		at = c + 1;
	}
	return len;
}

/* The length of a header name at p (tchars up to a ':'), or 0 when the line is not a header. */
static int64_t header_name(const uint8_t *p, int64_t len)
{
	int64_t i = 0;
	while (i < len && i <= MAX_NAME && tchar(p[i]))
		i++;
	return (i > 0 && i < len && p[i] == ':') ? i : 0;
}

/* The end of the line at from: its '\r' or '\n', or len. */
static int64_t line_end(const uint8_t *p, int64_t from, int64_t len)
{
	const uint8_t *nl = memchr(p + from, '\n', (size_t)(len - from));
	int64_t e = nl ? (int64_t)(nl - p) : len;
	if (e > from && p[e - 1] == '\r')
		e--; /* a CR before the LF, or the last byte of a prefix cut between them */
	return e;
}

static const char *const METHODS[] = { "get ", "post ", "put ", "delete ", "patch ", "head ", "options ",
				       "connect ", "trace ", 0 };

static int64_t request_line_method(const uint8_t *p, int64_t len)
{
	if (p[0] < 'C' || p[0] > 'T')
		return 0;
	for (int k = 0; METHODS[k]; k++)
		if (p[0] == (uint8_t)METHODS[k][0] - 32 && starts_with(p, len, METHODS[k]))
			return (int64_t)strlen(METHODS[k]);
	return 0;
}

/* Is p[0..n) a chunk-size line (hex digits only)? */
static int hex_line(const uint8_t *p, int64_t n)
{
	int64_t i = 0;
	while (i < n && hexval(p[i]) >= 0)
		i++;
	return i > 0 && i == n && n <= 16;
}

/* Header lines: the value of a credential header, from after the ':' and white space to the end
 * of the line and of the lines that fold into it (obs-fold: starting with a space or a tab). A
 * prefix that starts inside a header value (no name before it: the rest of a long Cookie or
 * Authorization that the previous segment began) is redacted to the end of its first line when
 * the line after it is a header or the blank line ending the headers. */
static int redact_headers(uint8_t *p, int64_t len, const char *extra, int64_t method)
{
	int changed = 0;
	int64_t first = line_end(p, 0, len);
	int64_t ind = 0; /* an indented "name: value" line is judged as one below, not as a continuation */
	while (ind < first && (p[ind] == ' ' || p[ind] == '\t'))
		ind++;
	if (first < len && !method && !header_name(p + ind, len - ind) && p[0] != '-' && p[0] != ':' &&
	    !hex_line(p, first)) {
		/* (not a multipart boundary, an event stream's comment, a chunk size) */
		int printable = first > 0;
		for (int64_t i = 0; i < first && printable; i++) {
			printable = CLS[p[i]] & C_PRINT;
			if (p[i] == 'H' && starts_with(p + i, first - i, "http/"))
				printable = 0; /* a request or status line (HTTP/2's preface too) */
		}
		int64_t next = first + (p[first] == '\r' ? 2 : 1);
		if (printable && next < len && (p[next] == '\r' || p[next] == '\n' || header_name(p + next, len - next)))
			changed |= stars(p, 0, first, len);
	}
	int folds = 0; /* the line before was a credential header's: lines that start with white space continue it */
	for (int64_t s = 0; s < len;) {
		int64_t e = line_end(p, s, len);
		int64_t nl = e < len && p[e] == '\r' ? e + 2 : e + 1;
		if (folds && (p[s] == ' ' || p[s] == '\t')) {
			changed |= stars(p, s, e, len); /* a folded line of the secret header's value */
		} else {
			/* a name after indentation or a list item's "- " is judged too (YAML, properties,
			 * .env files: "  password: ..."), but nothing folds into it */
			int64_t at = s;
			while (at < e && (p[at] == ' ' || p[at] == '\t'))
				at++;
			if (at + 1 < e && p[at] == '-' && p[at + 1] == ' ')
				at += 2;
			int secret = 0;
			int64_t n = at < len ? header_line(p + at, len - at, extra, &secret) : 0;
			folds = secret && at == s;
			if (secret) {
				int64_t v = at + n + 1;
				while (v < e && (p[v] == ' ' || p[v] == '\t'))
					v++;
				changed |= stars(p, v, e, len);
			}
		}
		if (e >= len)
			break;
		s = nl;
	}
	return changed;
}

/* A JSON array value at v ('['), its strings and scalars redacted, to its closing bracket. */
static int64_t star_array(uint8_t *p, int64_t v, int64_t len, int *changed)
{
	int depth = 0;
	for (int64_t i = v; i < len; i++) {
		uint8_t c = p[i];
		if (c == '"') {
			int64_t e = closing_quote(p, i + 1, len);
			*changed |= stars(p, i + 1, e, len);
			i = e;
		} else if (c == '[' || c == '{') {
			depth++;
		} else if (c == ']' || c == '}') {
			if (--depth == 0)
				return i + 1;
		} else if (c != ',' && c != ':' && !is_ws(c)) {
			*changed |= stars(p, i, i + 1, len);
		}
	}
	return len;
}

/* Bodies and query strings:
 * - name=value (query parameters, form fields, a fragment's parameters): at each '=' the name
 *   before it (starting the prefix or after one of "&?;,#\"' \t\r\n"); the value runs to '&', '#',
 *   '"', white space or the end;
 * - multipart fields: name="..." in a Content-Disposition; the value runs from the blank line
 *   after it to the end of its line (the boundary follows) or the end. */
static int redact_forms(uint8_t *p, int64_t len, const char *extra)
{
	int changed = 0;
	const uint8_t *q;
	for (int64_t at = 0; at < len && (q = memchr(p + at, '=', (size_t)(len - at))) != 0;) {
		int64_t eq = (int64_t)(q - p);
		int64_t st = eq;
		while (st > 0 && eq - st < MAX_RAW_NAME && name_char(p[st - 1]))
			st--;
		at = eq + 1;
		if (st == eq)
			continue;
		uint8_t before = st > 0 ? p[st - 1] : '&';
		if (eq - st == 4 && starts_with(p + st, 4, "name") && eq + 1 < len && p[eq + 1] == '"') {
			/* multipart: name="field" ... \r\n\r\n value \r\n */
			int64_t f = eq + 2, fe = f;
			while (fe < len && p[fe] != '"' && p[fe] != '\r' && p[fe] != '\n')
				fe++;
			if (!secret_name(p + f, fe - f, extra, 1))
				continue;
			int64_t v = fe;
			while (v + 3 < len && !(p[v] == '\r' && p[v + 1] == '\n' && p[v + 2] == '\r' && p[v + 3] == '\n'))
				v++;
			if (v + 3 >= len)
				continue; /* the value is not in the prefix */
			v += 4;
			int64_t e = v;
			while (e < len && p[e] != '\r' && p[e] != '\n')
				e++;
			changed |= stars(p, v, e, len);
			at = e;
			continue;
		}
		if (!(before == '&' || before == '?' || before == ';' || before == ',' || before == '#' || before == '"' ||
		      before == '\'' || is_ws(before)))
			continue;
		if (!secret_name(p + st, eq - st, extra, 1))
			continue;
		int64_t e = eq + 1;
		while (e < len && p[e] != '&' && p[e] != '#' && p[e] != '"' && !is_ws(p[e]))
			e++;
		changed |= stars(p, eq + 1, e, len);
		at = e;
	}
	return changed;
}

/* At each ':':
 * - "name": value, a JSON member at any depth: the quote before the colon (white space between)
 *   closes a name whose opening quote is the nearest one before it (so a stray quote earlier in
 *   the prefix changes nothing); a string value runs to its closing quote (escapes skipped), any
 *   other scalar to ',', '}', ']' or white space; an array's strings and scalars are redacted; an
 *   object is entered (its own members are judged by name);
 * - scheme://user:password@host: the password. */
static int redact_colons(uint8_t *p, int64_t len, const char *extra)
{
	int changed = 0;
	const uint8_t *q;
	for (int64_t at = 0; at < len && (q = memchr(p + at, ':', (size_t)(len - at))) != 0;) {
		int64_t c = (int64_t)(q - p);
		at = c + 1;
		if (c + 2 < len && p[c + 1] == '/' && p[c + 2] == '/') {
			/* scheme://user:password@host: the authority ends at / ? # a quote or white space; its
			 * last '@' ends the userinfo (a password may hold one); cut by the prefix, what is there */
			int64_t a = c + 3, pw = -1, last_at = -1;
			for (; a < len && a - c < 256; a++) {
				uint8_t b = p[a];
				if (b == '/' || b == '?' || b == '#' || b == '"' || b == '\'' || b == '<' || b == '>' || is_ws(b))
					break;
				if (b == ':' && pw < 0 && last_at < 0)
					pw = a + 1;
				if (b == '@')
					last_at = a;
			}
			int64_t end = last_at >= 0 ? last_at : (a == len ? len : -1);
			if (pw > 0 && end >= pw) {
				changed |= stars(p, pw, end, len);
				at = end;
			}
			continue;
		}
		int64_t b = c;
		while (b > 0 && is_ws(p[b - 1]))
			b--;
		if (b == 0 || p[b - 1] != '"')
			continue;
		int64_t close = b - 1;
		/* JSON inside a JSON string ({"body":"{\"password\":\"...\"}"}): names and values
		 * between \" and \" */
		int esc = close > 0 && p[close - 1] == '\\';
		if (esc && close > 1 && p[close - 2] == '\\')
			continue; /* \\" : deeper than one level */
		int64_t name_end = close - esc;
		int64_t open = name_end - 1;
		while (open >= 0 && name_end - open <= MAX_RAW_NAME + 1 &&
		       !(p[open] == '"' && (!esc || (open > 0 && p[open - 1] == '\\'))))
			open--;
		if (open < 0 || p[open] != '"' || open + 1 == name_end)
			continue;
		if (!secret_name(p + open + 1, name_end - open - 1, extra, 0))
			continue;
		int64_t v = c + 1;
		while (v < len && is_ws(p[v]))
			v++;
		if (v >= len || p[v] == '{')
			continue;
		if (esc && p[v] == '\\' && v + 1 < len && p[v + 1] == '"') {
			int64_t e = v + 2;
			while (e < len && !(p[e] == '"' && p[e - 1] == '\\'))
				e++;
			changed |= stars(p, v + 2, e - (e < len), len);
			at = e + 1;
		} else if (p[v] == '"') {
			int64_t e = closing_quote(p, v + 1, len);
			changed |= stars(p, v + 1, e, len);
			at = e + 1;
		} else if (p[v] == '[') {
			at = star_array(p, v, len, &changed);
		} else {
			int64_t e = v;
			while (e < len && p[e] != ',' && p[e] != '}' && p[e] != ']' && !is_ws(p[e]))
				e++;
			changed |= stars(p, v, e, len);
			at = e;
		}
	}
	return changed;
}

/* -- values by their shape ------------------------------------------------------------------ */

static inline int b64url(uint8_t c)
{
	return CLS[c] & C_B64URL;
}

static inline int upper_digit(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static inline int alnum_us(uint8_t c)
{
	return is_alnum(c) || c == '_';
}

static inline int alnum_dash(uint8_t c)
{
	return is_alnum(c) || c == '-';
}

/* After a marker ending at m: the run of chars of class ok. A token when the run is at least min
 * long, or when the prefix cuts it (the run reaches len). Redacts the run; returns its end, or -1. */
static int64_t token_after(uint8_t *p, int64_t m, int64_t len, int (*ok)(uint8_t), int64_t min, int64_t max,
			   int *changed)
{
	int64_t e = m;
	while (e < len && e - m < max && ok(p[e]))
		e++;
	int cut = e == len && e > m;
	if (e - m < min && !cut)
		return -1;
	if (e < len && is_alnum(p[e]) && e - m >= max)
		return -1; /* longer than any such token: something else */
	*changed |= stars(p, m, e, len);
	return e;
}

/* Does a token start at s: nothing of a longer word before it (a percent-escape such as %3D or
 * %22, or a JSON escape such as \n, ends one). */
static inline int boundary_before(const uint8_t *p, int64_t s)
{
	if (s == 0 || !is_alnum(p[s - 1]))
		return 1;
	if (s >= 3 && p[s - 3] == '%' && hexval(p[s - 2]) >= 0 && hexval(p[s - 1]) >= 0)
		return 1;
	return s >= 2 && p[s - 2] == '\\';
}

/* A shape starting around anchor i ('-', '_', 'J' or 'A'): redacts it and returns where it ends,
 * or -1. */
static int64_t shape_at(uint8_t *p, int64_t i, int64_t len, int *changed)
{
	uint8_t c = p[i];
	if (c == 'J') { /* JWT: eyJ... (base64url JSON), its dots and further parts too */
		int64_t s = i - 2;
		if (s < 0 || p[s] != 'e' || p[s + 1] != 'y' || !boundary_before(p, s))
			return -1;
		int64_t e = i + 1;
		while (e < len && b64url(p[e]))
			e++;
		if (e - s < 12 && e < len)
			return -1;
		int dots = 0;
		while (e < len && (b64url(p[e]) || p[e] == '.'))
			dots += p[e++] == '.';
		if (!dots && e < len)
			return -1; /* base64 of JSON with no dot (a pagination cursor): not a JWT */
		*changed |= stars(p, i + 1, e, len);
		return e;
	}
	if (c == 'A') {
		if (!boundary_before(p, i) || i + 4 > len)
			return -1;
		if (p[i + 1] == 'I' && p[i + 2] == 'z' && p[i + 3] == 'a') /* Google API key */
			return token_after(p, i + 4, len, b64url, 35, 35, changed);
		if ((p[i + 1] == 'K' && p[i + 2] == 'I' && p[i + 3] == 'A') ||
		    (p[i + 1] == 'S' && p[i + 2] == 'I' && p[i + 3] == 'A') ||
		    (p[i + 1] == 'B' && p[i + 2] == 'I' && p[i + 3] == 'A') ||
		    (p[i + 1] == 'C' && p[i + 2] == 'C' && p[i + 3] == 'A')) /* AWS access key id */
			return token_after(p, i + 4, len, upper_digit, 16, 16, changed);
		return -1;
	}
	if (c == '_') {
		/* GitHub: ghp_ gho_ ghu_ ghs_ ghr_, github_pat_ */
		if (i >= 3 && p[i - 3] == 'g' && p[i - 2] == 'h' && memchr("pousr", p[i - 1], 5) && boundary_before(p, i - 3))
			return token_after(p, i + 1, len, is_alnum, 30, 255, changed);
		if (i >= 10 && memcmp(p + i - 10, "github_pat", 10) == 0 && boundary_before(p, i - 10))
			return token_after(p, i + 1, len, alnum_us, 22, 255, changed);
		/* Stripe: sk_live_ rk_live_ sk_test_ rk_test_ */
		if (i >= 2 && (p[i - 2] == 's' || p[i - 2] == 'r') && p[i - 1] == 'k' && boundary_before(p, i - 2) &&
		    i + 6 <= len && (memcmp(p + i + 1, "live_", 5) == 0 || memcmp(p + i + 1, "test_", 5) == 0))
			return token_after(p, i + 6, len, is_alnum, 16, 255, changed);
		return -1;
	}
	/* '-' */
	if (i >= 5 && memcmp(p + i - 5, "glpat", 5) == 0 && boundary_before(p, i - 5)) /* GitLab */
		return token_after(p, i + 1, len, b64url, 20, 255, changed);
	if (i >= 4 && p[i - 4] == 'x' && p[i - 3] == 'o' && p[i - 2] == 'x' && memchr("abposr", p[i - 1], 6) &&
	    boundary_before(p, i - 4)) /* Slack */
		return token_after(p, i + 1, len, alnum_dash, 10, 255, changed);
	if (i + 10 <= len && memcmp(p + i, "-----BEGIN", 10) == 0) { /* PEM private key */
		int64_t e = i + 10, priv = 0; /* the label ends at the next "-----" (a JSON string's \n is no line end) */
		while (e < len && e - i < 80 && !(p[e] == '-' && e + 5 <= len && memcmp(p + e, "-----", 5) == 0)) {
			priv |= e + 11 <= len && memcmp(p + e, "PRIVATE KEY", 11) == 0;
			e++;
		}
		if (!priv || e >= len || e - i >= 80)
			return i + 10;
		e += 5;
		int64_t end = len;
		for (int64_t k = e; k + 8 <= len; k++) {
			if (p[k] == '-' && memcmp(p + k, "-----END", 8) == 0) {
				end = k;
				break;
			}
		}
		for (int64_t k = e; k < end; k++)
			if (p[k] != '\r' && p[k] != '\n')
				*changed |= stars(p, k, k + 1, len);
		return end + 8 <= len ? end + 8 : len;
	}
	return -1;
}

static inline int anchor(uint8_t c)
{
	return c == '-' || c == '_' || c == 'J' || c == 'A';
}

static int redact_shapes(uint8_t *p, int64_t len)
{
	int changed = 0;
	int64_t skip = 0; /* bytes before this were judged already */
	int64_t i = 0;
#if defined(__SSE2__)
	const __m128i d = _mm_set1_epi8('-'), u = _mm_set1_epi8('_'), j = _mm_set1_epi8('J'), a = _mm_set1_epi8('A');
	for (; i + 16 <= len; i += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(p + i));
		__m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, d), _mm_cmpeq_epi8(x, u)),
					 _mm_or_si128(_mm_cmpeq_epi8(x, j), _mm_cmpeq_epi8(x, a)));
		unsigned bits = (unsigned)_mm_movemask_epi8(m);
		while (bits) {
			int64_t k = i + __builtin_ctz(bits);
			bits &= bits - 1;
			if (k < skip)
				continue;
			int64_t e = shape_at(p, k, len, &changed);
			if (e > skip)
				skip = e;
		}
		/* a shape redacted may have starred bytes of this block's anchors: judged by p as it is now */
	}
#endif
	for (; i < len; i++) {
		if (i < skip || !anchor(p[i]))
			continue;
		int64_t e = shape_at(p, i, len, &changed);
		if (e > skip)
			skip = e;
	}
	return changed;
}

/* A request line's path: a segment of 24 or more token characters that reads as random is
 * redacted: letters of both cases; at least 70% as many distinct characters
 * as n characters drawn at random from 62 would have (a 24-character token has about 20, hex
 * strings such as hashes and UUIDs at most 17); and a change between upper case, lower case,
 * digit and other at least every third character (a random token changes at six in ten, a
 * camel-case name or a slug once a word). Words and hashes are left for the consumers' templates. */
static int random_looking(const uint8_t *s, int64_t n)
{
	uint64_t seen[4] = { 0, 0, 0, 0 };
	int up = 0, lo = 0, distinct = 0, changes = 0, cls = -1;
	for (int64_t k = 0; k < n; k++) {
		uint8_t b = s[k];
		int now = 3;
		if (b >= 'A' && b <= 'Z')
			up = 1, now = 0;
		else if (b >= 'a' && b <= 'z')
			lo = 1, now = 1;
		else if (b >= '0' && b <= '9')
			now = 2;
		else if (!(b == '-' || b == '_' || b == '.' || b == '~' || b == '+' || b == '=' || b == '%'))
			return 0;
		changes += cls >= 0 && now != cls;
		cls = now;
		if (!(seen[b >> 6] & (1ull << (b & 63)))) {
			seen[b >> 6] |= 1ull << (b & 63);
			distinct++;
		}
	}
	if (!up || !lo || changes * 3 < n)
		return 0;
	double miss = 1.0; /* (61/62)^n: the chance that one of 62 characters is not drawn */
	for (int64_t k = 0; k < n && miss > 1e-9; k++)
		miss *= 61.0 / 62.0;
	return distinct >= 0.7 * 62.0 * (1.0 - miss);
}

static int redact_path_tokens(uint8_t *p, int64_t len, int64_t m)
{
	int changed = 0;
	int64_t s = m;
	for (int64_t i = m; i <= len; i++) {
		uint8_t c = i < len ? p[i] : ' ';
		if (!(CLS[c] & C_PATHEND))
			continue;
		if (i - s >= 24 && random_looking(p + s, i - s))
			changed |= stars(p, s, i, len);
		if (c != '/')
			break;
		s = i + 1;
	}
	return changed;
}

/* -- HTTP/2 ----------------------------------------------------------------------------------- */

static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* Is the 9-byte frame header at f one that an HTTP/2 peer sends? */
static int h2_frame_ok(const uint8_t *f, int64_t *flen, int *type)
{
	int64_t l = ((int64_t)f[0] << 16) | ((int64_t)f[1] << 8) | f[2];
	int t = f[3], fl = f[4];
	uint32_t sid = ((uint32_t)f[5] << 24) | ((uint32_t)f[6] << 16) | ((uint32_t)f[7] << 8) | f[8];
	if (sid & 0x80000000u || l > (1 << 20))
		return 0;
	switch (t) {
	case 0: /* DATA */
		if (!sid || fl & ~0x09)
			return 0;
		break;
	case 1: /* HEADERS */
		if (!sid || fl & ~0x2d)
			return 0;
		break;
	case 2: /* PRIORITY */
		if (!sid || l != 5)
			return 0;
		break;
	case 3: /* RST_STREAM */
		if (!sid || l != 4)
			return 0;
		break;
	case 4: /* SETTINGS */
		if (sid || l % 6 || fl & ~0x01)
			return 0;
		break;
	case 5: /* PUSH_PROMISE */
		if (!sid || fl & ~0x0c)
			return 0;
		break;
	case 6: /* PING */
		if (sid || l != 8 || fl & ~0x01)
			return 0;
		break;
	case 7: /* GOAWAY */
		if (sid || l < 8)
			return 0;
		break;
	case 8: /* WINDOW_UPDATE */
		if (l != 4)
			return 0;
		break;
	case 9: /* CONTINUATION */
		if (!sid || fl & ~0x04)
			return 0;
		break;
	default:
		return 0;
	}
	*flen = l;
	*type = t;
	return 1;
}

/* The header blocks of the frames from at on: HEADERS, PUSH_PROMISE and CONTINUATION payloads
 * redacted, frame headers and every other frame kept. */
static int star_h2_blocks(uint8_t *p, int64_t at, int64_t len)
{
	int changed = 0;
	for (int64_t f = at; f + 9 <= len;) {
		int64_t l = ((int64_t)p[f] << 16) | ((int64_t)p[f + 1] << 8) | p[f + 2];
		int t = p[f + 3];
		if (t == 1 || t == 5 || t == 9)
			changed |= stars(p, f + 9, f + 9 + l, len);
		f += 9 + l;
	}
	return changed;
}

/* HTTP/2 (and gRPC). Where the prefix says so — the client preface, or a 101 answer switching to
 * h2c — every frame after it is walked by its length whatever its type or flags (RFC 9113: unknown
 * ones are ignored, not an end), so no extension frame can hide the header blocks behind it.
 * Without that, the prefix must be frames from its start (a segment of a connection under way):
 * a chain of frame headers an HTTP/2 peer sends (known types and flags, at most the default
 * 16 KiB each) reaching the prefix's end, one of them carrying headers. */
static int redact_h2(uint8_t *p, int64_t len)
{
	if (len >= 24 && memcmp(p, H2_PREFACE, 24) == 0)
		return star_h2_blocks(p, 24, len);
	if (len >= 12 && starts_with(p, len, "http/1.1 101")) {
		for (int64_t i = 12; i + 3 < len; i++)
			if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
				return star_h2_blocks(p, i + 4, len);
		return 0;
	}
	int64_t headers = 0;
	for (int64_t f = 0; f + 9 <= len;) {
		int64_t l;
		int t;
		if (!h2_frame_ok(p + f, &l, &t) || l > 16384)
			return 0;
		headers += t == 1 || t == 5 || t == 9;
		f += 9 + l;
	}
	return headers ? star_h2_blocks(p, 0, len) : 0;
}

#define MAX_PASSES 6 /* passes after the first that changed a row (a fixpoint comes after one or two) */

/* Redact one payload prefix in place; returns 0 when nothing was replaced, else 1 | 2 when a byte
 * other than a letter or a digit was (see stars). */
static int redact_one(uint8_t *p, int64_t len, const char *extra, int64_t flags)
{
	if (len <= 0)
		return 0;
	if (len >= 5 && p[0] >= 0x14 && p[0] <= 0x17 && p[1] == 3 && p[2] <= 4)
		return 0; /* a TLS record: encrypted (or a handshake, which carries no credential) */
	int changed = 0;
	first_line_end = line_end(p, 0, len);
	if (!(flags & KEEP_HTTP2_HEADERS))
		changed |= redact_h2(p, len);
	int64_t method = request_line_method(p, len); /* the length of "GET " etc.: a request line */
	changed |= redact_headers(p, len, extra, method);
	changed |= redact_forms(p, len, extra);
	changed |= redact_colons(p, len, extra);
	changed |= redact_shapes(p, len);
	if (method)
		changed |= redact_path_tokens(p, len, method);
	return changed;
}

/* Redact n payload prefixes in place, where they sit in the kernel records: row i starts at
 * payload + i * stride (bytes) and holds min(cap_len[i * cap_stride], width) valid bytes.
 * flags: KEEP_HTTP2_HEADERS. Returns the number of rows changed. */
int64_t pkt_redact(uint8_t *payload, int64_t n, int64_t stride, int64_t width, const uint16_t *cap_len,
		   int64_t cap_stride, const char *extra, int64_t flags)
{
	int64_t count = 0;
	for (int64_t i = 0; i < n; i++) {
		int64_t len = cap_len[i * cap_stride];
		if (len > width)
			len = width;
		uint8_t *row = payload + i * stride;
		int changed = redact_one(row, len, extra, flags);
		if (!changed)
			continue;
		count++;
		/* to a fixpoint where stars replaced bytes the rules read structure from: what one rule
		 * starred can change what another sees (a JSON value starred over a multipart name
		 * leaves a form field behind), so another pass may find more. Stars only ever replace
		 * bytes, so it ends, and the result is the same however many times it is redacted. A
		 * row without a credential, or whose values held only letters and digits, is walked
		 * once */
		for (int pass = 0; pass < MAX_PASSES && (changed & 2); pass++)
			changed = redact_one(row, len, extra, flags);
	}
	return count;
}
