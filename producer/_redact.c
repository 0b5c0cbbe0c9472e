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

static const char *const SECRET_PARAMS[] = {
	"token", "access_token", "refresh_token", "id_token", "api_key", "apikey", "key", "password", "passwd",
	"pwd", "secret", "client_secret", "sig", "signature", "auth", "session", "sessionid", 0,
};

static int secret_param(const uint8_t *p, int64_t len)
{
	for (int k = 0; SECRET_PARAMS[k]; k++) {
		const char *w = SECRET_PARAMS[k];
		int64_t wl = (int64_t)strlen(w);
		if (wl == len && starts_with(p, len, w))
			return 1;
	}
	return 0;
}

/* Redact one payload prefix in place; returns 1 if anything was replaced.
 * Header values of SECRET_HEADERS are replaced by '*' up to the end of their
 * line; in the request line, the values of SECRET_PARAMS query parameters.
 * Lengths never change and nothing past len is read or written. */
static int redact_one(uint8_t *p, int64_t len)
{
	int changed = 0;
	/* request line (only if the prefix starts like one, "TOKEN "): query parameters after the
	 * first '?' before a space or the end of the line */
	int64_t i = 0;
	while (i < len && p[i] >= 'A' && p[i] <= 'Z')
		i++;
	if (i == 0 || i >= len || p[i] != ' ')
		i = len;
	while (i < len && p[i] != '?' && p[i] != '\r' && p[i] != '\n')
		i++;
	if (i < len && p[i] == '?') {
		i++;
		while (i < len && p[i] != ' ' && p[i] != '\r' && p[i] != '\n') {
			int64_t name = i;
			while (i < len && p[i] != '=' && p[i] != '&' && p[i] != ' ' && p[i] != '\r' && p[i] != '\n')
				i++;
			int64_t name_len = i - name;
			if (i < len && p[i] == '=') {
				i++;
				int secret = secret_param(p + name, name_len);
				while (i < len && p[i] != '&' && p[i] != ' ' && p[i] != '\r' && p[i] != '\n') {
					if (secret && p[i] != '*') {
						p[i] = '*';
						changed = 1;
					}
					i++;
				}
			}
			if (i < len && p[i] == '&')
				i++;
		}
	}
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
	return changed;
}

/* Redact n payload prefixes in place, where they sit in the kernel records: row i starts at
 * payload + i * stride (bytes) and holds min(cap_len[i * cap_stride], width) valid bytes.
 * Returns the number of rows changed. */
int64_t pkt_redact(uint8_t *payload, int64_t n, int64_t stride, int64_t width, const uint16_t *cap_len,
		   int64_t cap_stride)
{
	int64_t count = 0;
	for (int64_t i = 0; i < n; i++) {
		int64_t len = cap_len[i * cap_stride];
		if (len > width)
			len = width;
		count += redact_one(payload + i * stride, len);
	}
	return count;
}
