/* Payload prefix parsers for the consumers: HTTP/1.x request lines and Host headers, the
 * HTTP/2 cleartext preface, TLS ClientHello server names. Plain C over a batch, called
 * through ctypes; every read is bounded by the prefix length (tests fuzz them).
 *
 * Output per record, 10 int32 (see pktstream/consumers/engine/parse.py for the Python names):
 *   kind, method, path_off, path_len, host_off, host_len, flags, version, status, content_length
 * status: an HTTP/1.x response's status code (0 otherwise); content_length: the Content-Length
 * header's value when the prefix holds it whole (requests and responses), else -1.
 */
#include <stdint.h>
#include <string.h>

enum { K_NONE = 0, K_HTTP1 = 1, K_H2_PREFACE = 2, K_TLS_HELLO = 3, K_HTTP1_RESPONSE = 4 };
enum {
	F_LINE_CUT = 1,     /* the request line is cut by the prefix: path may be incomplete */
	F_HEADERS_CUT = 2,  /* headers not complete within the prefix: Host may be missing */
	F_NO_HOST = 4,      /* complete headers without Host */
	F_TLS_CUT = 8,      /* ClientHello cut before the server name could be read */
};
#define OUT_COLS 10

static const char *const METHODS[] = {
	"", "GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD ", "OPTIONS ", "CONNECT ", "TRACE ", 0,
};
static const char H2_PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static inline uint8_t lc(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* The value of a Content-Length header among the header lines from s on (up to the blank line),
 * -1 when there is none within the prefix or it is not a whole number. */
static int32_t content_length(const uint8_t *p, int64_t len, int64_t s)
{
	while (s < len && p[s] != '\r' && p[s] != '\n') {
		int64_t e = s;
		while (e < len && p[e] != '\n')
			e++;
		if (e >= len) /* the line is cut: its value may be too */
			return -1;
		static const char CL[] = "content-length:";
		if (e - s >= 15) {
			int k = 0;
			while (k < 15 && lc(p[s + k]) == (uint8_t)CL[k])
				k++;
			if (k == 15) {
				int64_t v = s + 15, n = 0;
				while (v < e && (p[v] == ' ' || p[v] == '\t'))
					v++;
				if (v >= e || p[v] < '0' || p[v] > '9')
					return -1;
				while (v < e && p[v] >= '0' && p[v] <= '9') {
					n = n * 10 + (p[v] - '0');
					if (n > 0x7fffffff)
						return -1;
					v++;
				}
				while (v < e && (p[v] == ' ' || p[v] == '\t' || p[v] == '\r'))
					v++;
				return v < e ? -1 : (int32_t)n; /* something after the digits: not a length */
			}
		}
		s = e + 1;
	}
	return -1;
}

static void parse_response(const uint8_t *p, int64_t len, int32_t *o)
{
	o[0] = K_HTTP1_RESPONSE;
	o[7] = 10 + (p[7] - '0');
	o[9] = -1;
	/* "HTTP/1.x NNN" */
	if (len >= 12 && p[8] == ' ' && p[9] >= '1' && p[9] <= '5' && p[10] >= '0' && p[10] <= '9' &&
	    p[11] >= '0' && p[11] <= '9')
		o[8] = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	else
		o[6] |= F_LINE_CUT;
	int64_t eol = 8;
	while (eol < len && p[eol] != '\n')
		eol++;
	if (eol < len)
		o[9] = content_length(p, len, eol + 1);
}

static void parse_http1(const uint8_t *p, int64_t len, int method, int32_t *o)
{
	o[9] = -1;
	int64_t i = (int64_t)strlen(METHODS[method]);
	o[0] = K_HTTP1;
	o[1] = method;
	o[2] = (int32_t)i;
	while (i < len && p[i] != ' ' && p[i] != '\r' && p[i] != '\n')
		i++;
	o[3] = (int32_t)(i - o[2]);
	/* " HTTP/1.x" */
	if (i + 9 <= len && memcmp(p + i, " HTTP/1.", 8) == 0)
		o[7] = 10 + (p[i + 8] - '0');
	int64_t eol = i;
	while (eol < len && p[eol] != '\n')
		eol++;
	if (eol >= len) {
		o[6] |= F_LINE_CUT | F_HEADERS_CUT;
		return;
	}
	o[9] = content_length(p, len, eol + 1);
	/* header lines */
	int64_t s = eol + 1;
	for (;;) {
		if (s >= len) {
			o[6] |= F_HEADERS_CUT;
			return;
		}
		if (p[s] == '\r' || p[s] == '\n') /* empty line: end of headers */
			break;
		int64_t e = s;
		while (e < len && p[e] != '\n')
			e++;
		if (e - s >= 5 && lc(p[s]) == 'h' && lc(p[s + 1]) == 'o' && lc(p[s + 2]) == 's' &&
		    lc(p[s + 3]) == 't' && p[s + 4] == ':') {
			int64_t v = s + 5;
			while (v < e && (p[v] == ' ' || p[v] == '\t'))
				v++;
			int64_t ve = e;
			if (ve >= len) /* cut inside the Host line: keep what is there */
				o[6] |= F_HEADERS_CUT;
			while (ve > v && (p[ve - 1] == '\r' || p[ve - 1] == ' ' || p[ve - 1] == '\t'))
				ve--;
			o[4] = (int32_t)v;
			o[5] = (int32_t)(ve - v);
			return;
		}
		if (e >= len) {
			o[6] |= F_HEADERS_CUT;
			return;
		}
		s = e + 1;
	}
	o[6] |= F_NO_HOST;
}

static inline int need(int64_t len, int64_t at, int64_t n)
{
	return at >= 0 && n >= 0 && at + n <= len;
}

static void parse_tls(const uint8_t *p, int64_t len, int32_t *o)
{
	o[0] = K_TLS_HELLO;
	o[7] = (p[1] << 8) | p[2];
	int64_t i = 5 + 4 + 2 + 32; /* record header, handshake header, version, random */
	if (!need(len, i, 1))
		goto cut;
	i += 1 + p[i]; /* session id */
	if (!need(len, i, 2))
		goto cut;
	i += 2 + ((p[i] << 8) | p[i + 1]); /* cipher suites */
	if (!need(len, i, 1))
		goto cut;
	i += 1 + p[i]; /* compression methods */
	if (!need(len, i, 2))
		goto cut;
	int64_t end = i + 2 + ((p[i] << 8) | p[i + 1]);
	i += 2;
	while (i + 4 <= end) {
		if (!need(len, i, 4))
			goto cut;
		int type = (p[i] << 8) | p[i + 1];
		int64_t elen = (p[i + 2] << 8) | p[i + 3];
		i += 4;
		if (type == 0) { /* server_name: list length, then entries of type 0 (host_name) */
			if (!need(len, i, 5))
				goto cut;
			if (p[i + 2] != 0)
				return;
			int64_t nlen = (p[i + 3] << 8) | p[i + 4];
			if (!need(len, i + 5, nlen))
				goto cut;
			o[4] = (int32_t)(i + 5);
			o[5] = (int32_t)nlen;
			return;
		}
		i += elen;
	}
	return; /* no server name */
cut:
	o[6] |= F_TLS_CUT;
}

/* Classify and parse n payload prefixes: row i at payload + i * stride, cap_len[i] valid bytes
 * (at most width). out: n rows of OUT_COLS int32. Returns the number of rows recognised. */
int64_t pkt_parse_payloads(const uint8_t *payload, int64_t n, int64_t stride, int64_t width,
			   const int64_t *cap_len, int32_t *out)
{
	int64_t found = 0;
	for (int64_t r = 0; r < n; r++) {
		const uint8_t *p = payload + r * stride;
		int64_t len = cap_len[r];
		int32_t *o = out + r * OUT_COLS;
		memset(o, 0, OUT_COLS * sizeof(int32_t));
		if (len > width)
			len = width;
		if (len <= 0)
			continue;
		if (len >= 6 && p[0] == 0x16 && p[1] == 0x03 && p[5] == 0x01) {
			parse_tls(p, len, o);
			found++;
			continue;
		}
		if (len >= 3 && memcmp(p, "PRI", 3) == 0 &&
		    memcmp(p, H2_PREFACE, (size_t)(len < 24 ? len : 24)) == 0) {
			o[0] = K_H2_PREFACE;
			o[6] = len < 24 ? F_LINE_CUT : 0;
			found++;
			continue;
		}
		if (len >= 8 && memcmp(p, "HTTP/1.", 7) == 0) {
			parse_response(p, len, o);
			found++;
			continue;
		}
		for (int m = 1; METHODS[m]; m++) {
			int64_t ml = (int64_t)strlen(METHODS[m]);
			if (len >= ml && memcmp(p, METHODS[m], (size_t)ml) == 0) {
				parse_http1(p, len, m, o);
				found++;
				break;
			}
		}
	}
	return found;
}

/* Attack-string prefilter (pktstream/consumers/alerts/attacks.py, _SUSPECT): does a request's head (the
 * bytes before the first blank line) hold any character or word that one of the attack patterns
 * needs: ' " ` ; | $ ( ) % \, "..", "/etc/", "/bin/", "/proc/", "union", "select", "waitfor",
 * "information_schema", or the words "or" / "and" (letters in any case)? Most requests hold none
 * and are never handed to the regular expressions. */
static inline int word_char(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int has_at(const uint8_t *p, int64_t end, int64_t i, const char *w)
{
	int64_t k = 0;
	for (; w[k]; k++)
		if (i + k >= end || lc(p[i + k]) != (uint8_t)w[k])
			return 0;
	return 1;
}

static int has_word_at(const uint8_t *p, int64_t end, int64_t i, const char *w)
{
	int64_t k = (int64_t)strlen(w);
	return (i == 0 || !word_char(p[i - 1])) && has_at(p, end, i, w) && (i + k >= end || !word_char(p[i + k]));
}

static int suspect(const uint8_t *p, int64_t len)
{
	int64_t end = len;
	for (int64_t i = 0; i + 3 < len; i++)
		if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') {
			end = i;
			break;
		}
	for (int64_t i = 0; i < end; i++) {
		switch (lc(p[i])) {
		case '\'': case '"': case '`': case ';': case '|': case '$': case '(': case ')': case '%': case '\\':
			return 1;
		case '.':
			if (i + 1 < end && p[i + 1] == '.')
				return 1;
			break;
		case '/':
			if (has_at(p, end, i, "/etc/") || has_at(p, end, i, "/bin/") || has_at(p, end, i, "/proc/"))
				return 1;
			break;
		case 'u':
			if (has_at(p, end, i, "union"))
				return 1;
			break;
		case 's':
			if (has_at(p, end, i, "select"))
				return 1;
			break;
		case 'w':
			if (has_at(p, end, i, "waitfor"))
				return 1;
			break;
		case 'i':
			if (has_at(p, end, i, "information_schema"))
				return 1;
			break;
		case 'o':
			if (has_word_at(p, end, i, "or"))
				return 1;
			break;
		case 'a':
			if (has_word_at(p, end, i, "and"))
				return 1;
			break;
		default:
			break;
		}
	}
	return 0;
}

/* out[r] = 1 when row r (at payload + r * stride, cap_len[r] valid bytes, at most width) is suspect. */
void pkt_attack_suspects(const uint8_t *payload, int64_t n, int64_t stride, int64_t width, const int64_t *cap_len,
			 uint8_t *out)
{
	for (int64_t r = 0; r < n; r++) {
		int64_t len = cap_len[r];
		if (len > width)
			len = width;
		out[r] = len > 0 ? (uint8_t)suspect(payload + r * stride, len) : 0;
	}
}
