/* Credential redaction in payload prefixes, in place, called through ctypes (no Python API used). */
#include <stdint.h>
#include <string.h>

static inline uint8_t lower(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
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

static const char *const SECRET_HEADERS[] = {
	"authorization:", "proxy-authorization:", "cookie:", "set-cookie:", "x-api-key:", "api-key:",
	"apikey:", "x-auth-token:", "x-access-token:", "x-amz-security-token:", "x-csrf-token:", 0,
};

/* Credential names: query parameters, form fields, JSON members and multipart fields with one of
 * these names (any case) have their values redacted (docs/operations.md lists them). */
#define NAME(w) { w, sizeof(w) - 1 }
static const struct {
	const char *w;
	int64_t len;
} SECRET_PARAMS[] = {
	NAME("token"), NAME("access_token"), NAME("refresh_token"), NAME("id_token"), NAME("api_key"), NAME("apikey"),
	NAME("key"), NAME("password"), NAME("passwd"), NAME("pwd"), NAME("secret"), NAME("client_secret"),
	NAME("private_key"), NAME("sig"), NAME("signature"), NAME("auth"), NAME("session"), NAME("sessionid"),
	{ 0, 0 },
};
#undef NAME

/* Is p[0..len) one of the names (case-insensitively)? extra: more names, lower case, each ended by
 * a NUL, the list ended by an empty name (or a null pointer: none). Lengths and first letters
 * are compared before whole names: most candidates (every '=' and quoted string) fail there. */
static int secret_param(const uint8_t *p, int64_t len, const char *extra)
{
	if (len < 1 || len > 64)
		return 0;
	uint8_t c0 = lower(p[0]);
	for (int k = 0; SECRET_PARAMS[k].w; k++) {
		if (SECRET_PARAMS[k].len == len && (uint8_t)SECRET_PARAMS[k].w[0] == c0 && starts_with(p, len, SECRET_PARAMS[k].w))
			return 1;
	}
	for (const char *w = extra; w && *w; w += strlen(w) + 1)
		if ((int64_t)strlen(w) == len && starts_with(p, len, w))
			return 1;
	return 0;
}

/* Replace p[from..to) by '*' (within len); returns 1 if a byte changed. */
static int stars(uint8_t *p, int64_t from, int64_t to, int64_t len)
{
	int changed = 0;
	if (to > len)
		to = len;
	for (int64_t i = from; i < to; i++) {
		if (p[i] != '*') {
			p[i] = '*';
			changed = 1;
		}
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

static inline int name_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
	       c == '.';
}

/* Bodies, wherever they sit in the prefix (a body may start a TCP segment of its own, with no
 * headers before it):
 * - form fields and query parameters, name=value: at each '=' the name before it (starting the
 *   prefix or after one of "&?;, \t\r\n"); the value runs to '&', a space, a line end or the end
 *   (query strings in request lines included: one rule serves both);
 * - multipart fields: name="..." in a Content-Disposition; the value runs from the blank line
 *   after it to the end of its line (the boundary follows) or the end;
 * - JSON members at any depth, "name": value; a string value runs to its closing quote (escapes
 *   skipped), any other scalar to ',', '}', ']' or white space; objects and arrays are entered, not
 *   redacted whole (their own members are judged by name).
 * A value the prefix cuts is redacted to the end of the prefix. */
static int redact_bodies(uint8_t *p, int64_t len, const char *extra)
{
	int changed = 0;
	const uint8_t *q;
	/* name=value and name="field" */
	for (int64_t at = 0; at < len && (q = memchr(p + at, '=', (size_t)(len - at))) != 0;) {
		int64_t eq = (int64_t)(q - p);
		int64_t st = eq;
		while (st > 0 && eq - st <= 64 && name_char(p[st - 1]))  /* no name is longer than 64 */
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
			if (!secret_param(p + f, fe - f, extra))
				continue;
			int64_t v = fe;
			while (v + 3 < len && !(p[v] == '\r' && p[v + 1] == '\n' && p[v + 2] == '\r' && p[v + 3] == '\n'))
				v++;
			if (v + 3 >= len)
				continue;  /* the value is not in the prefix */
			v += 4;
			int64_t e = v;
			while (e < len && p[e] != '\r' && p[e] != '\n')
				e++;
			changed |= stars(p, v, e, len);
			at = e;
			continue;
		}
		if (!(before == '&' || before == '?' || before == ';' || before == ',' || before == ' ' ||
		      before == '\t' || before == '\r' || before == '\n'))
			continue;
		if (!secret_param(p + st, eq - st, extra))
			continue;
		int64_t e = eq + 1;
		while (e < len && p[e] != '&' && p[e] != ' ' && p[e] != '\r' && p[e] != '\n')
			e++;
		changed |= stars(p, eq + 1, e, len);
		at = e;
	}
	/* "name": value */
	for (int64_t at = 0; at < len && (q = memchr(p + at, '"', (size_t)(len - at))) != 0;) {
		int64_t open = (int64_t)(q - p);
		int64_t close = closing_quote(p, open + 1, len);
		if (close >= len)
			break;  /* the prefix ends inside it: no value follows */
		if (close - open - 1 > 64) {
			at = close + 1;  /* too long for a name: a string value; the next quote opens the next string */
			continue;
		}
		int64_t c = close + 1;
		while (c < len && (p[c] == ' ' || p[c] == '\t' || p[c] == '\r' || p[c] == '\n'))
			c++;
		if (c >= len || p[c] != ':') {
			at = close + 1;  /* a string, not a member name: go on after it */
			continue;
		}
		int secret = secret_param(p + open + 1, close - open - 1, extra);
		int64_t v = c + 1;
		while (v < len && (p[v] == ' ' || p[v] == '\t' || p[v] == '\r' || p[v] == '\n'))
			v++;
		at = v;
		if (!secret || v >= len || p[v] == '{' || p[v] == '[')
			continue;
		if (p[v] == '"') {
			int64_t e = closing_quote(p, v + 1, len);
			changed |= stars(p, v + 1, e, len);
			at = e + 1;
		} else {
			int64_t e = v;
			while (e < len && p[e] != ',' && p[e] != '}' && p[e] != ']' && p[e] != ' ' && p[e] != '\r' &&
			       p[e] != '\n' && p[e] != '\t')
				e++;
			changed |= stars(p, v, e, len);
			at = e;
		}
	}
	return changed;
}

/* Redact one payload prefix in place; returns 1 if anything was replaced.
 * Header values of SECRET_HEADERS (requests' and responses': Set-Cookie) are replaced by '*' up
 * to the end of their line; credential names' values in query strings and bodies: see
 * redact_bodies. Lengths never change and nothing past len is read or written. */
static int redact_one(uint8_t *p, int64_t len, const char *extra)
{
	int changed = 0;
	/* header lines: at the start of every line (memchr jumps from one line to the next) */
	for (int64_t s = 0; s < len;) {
		for (int k = 0; SECRET_HEADERS[k]; k++) {
			if (!starts_with(p + s, len - s, SECRET_HEADERS[k]))
				continue;
			int64_t v = s + (int64_t)strlen(SECRET_HEADERS[k]);
			while (v < len && p[v] == ' ')
				v++;
			for (; v < len && p[v] != '\r' && p[v] != '\n'; v++) {
				if (p[v] != '*') {
					p[v] = '*';
					changed = 1;
				}
			}
			break;
		}
		const uint8_t *nl = memchr(p + s, '\n', (size_t)(len - s));
		if (!nl)
			break;
		s = (int64_t)(nl - p) + 1;
	}
	return changed | redact_bodies(p, len, extra);
}

/* Redact n payload prefixes in place, where they sit in the kernel records: row i starts at
 * payload + i * stride (bytes) and holds min(cap_len[i * cap_stride], width) valid bytes.
 * Returns the number of rows changed. */
int64_t pkt_redact(uint8_t *payload, int64_t n, int64_t stride, int64_t width, const uint16_t *cap_len,
		   int64_t cap_stride, const char *extra)
{
	int64_t count = 0;
	for (int64_t i = 0; i < n; i++) {
		int64_t len = cap_len[i * cap_stride];
		if (len > width)
			len = width;
		count += redact_one(payload + i * stride, len, extra);
	}
	return count;
}
