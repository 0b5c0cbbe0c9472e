/* pktstream's compiled hot loops, called through ctypes (no Python API used).
 *
 * pkt_avro_encode writes the Avro binary encoding of n records, field after
 * field, from column matrices. Its output is byte-for-byte what fastavro's
 * schemaless_writer writes (tests/unit/test_avro.py proves it).
 */
#include <stdint.h>
#include <string.h>

enum { KIND_VARINT = 0, KIND_FIXED = 1, KIND_BYTES = 2 };

static inline int64_t put_varint(uint8_t *out, int64_t pos, int64_t v)
{
	/* Avro long: zig-zag, then 7 bits at a time, low group first */
	uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
	while (z >= 0x80) {
		out[pos++] = (uint8_t)(z | 0x80);
		z >>= 7;
	}
	out[pos++] = (uint8_t)z;
	return pos;
}

/* Returns the number of bytes written, or -1 if out_cap would be exceeded
 * or a bytes length is outside 0..width (nothing is read out of bounds). */
int64_t pkt_avro_encode(int64_t n, int64_t nfields, const int64_t *kinds, const int64_t *slots,
			const int64_t *ints, int64_t ints_cols,
			const uint8_t *fixed, int64_t fixed_cols, const int64_t *fixed_off, const int64_t *fixed_size,
			const uint8_t *byts, int64_t byts_cols, const int64_t *byts_off, const int64_t *byts_width,
			const int64_t *blens, int64_t blens_cols,
			uint8_t *out, int64_t out_cap)
{
	int64_t pos = 0;
	for (int64_t i = 0; i < n; i++) {
		for (int64_t f = 0; f < nfields; f++) {
			int64_t s = slots[f];
			if (out_cap - pos < 10)
				return -1;
			switch (kinds[f]) {
			case KIND_VARINT:
				pos = put_varint(out, pos, ints[i * ints_cols + s]);
				break;
			case KIND_FIXED: {
				int64_t sz = fixed_size[s];
				if (out_cap - pos < sz)
					return -1;
				memcpy(out + pos, fixed + i * fixed_cols + fixed_off[s], (size_t)sz);
				pos += sz;
				break;
			}
			default: {
				int64_t len = blens[i * blens_cols + s];
				if (len < 0 || len > byts_width[s])
					return -1;
				pos = put_varint(out, pos, len);
				if (out_cap - pos < len)
					return -1;
				memcpy(out + pos, byts + i * byts_cols + byts_off[s], (size_t)len);
				pos += len;
			}
			}
		}
	}
	return pos;
}

/* ---- payload redaction ------------------------------------------------------------------ */

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

/* ---- decoding -------------------------------------------------------------------------- */

/* Read one Avro long at *pos; returns 0, or -1 past the end, -2 if longer than 10 bytes. */
static inline int get_varint(const uint8_t *buf, int64_t len, int64_t *pos, int64_t *out)
{
	uint64_t z = 0;
	int shift = 0;
	for (;;) {
		if (*pos >= len)
			return -1;
		uint8_t b = buf[(*pos)++];
		z |= (uint64_t)(b & 0x7F) << shift;
		if (!(b & 0x80))
			break;
		shift += 7;
		if (shift > 63)
			return -2;
	}
	*out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
	return 0;
}

/* Decode nrec records of the field layout (kinds/slots as for encoding) into column matrices.
 * A bytes value longer than its column's width is cut to the width; its full length is kept in
 * blens. Returns the bytes consumed, or a negative error: -1 data ends inside a record, -2 a
 * varint longer than 10 bytes, -3 a negative bytes length. Never reads past len. */
int64_t pkt_avro_decode(const uint8_t *buf, int64_t len, int64_t nrec, int64_t nfields, const int64_t *kinds,
			const int64_t *slots, int64_t *ints, int64_t ints_cols,
			uint8_t *fixed, int64_t fixed_cols, const int64_t *fixed_off, const int64_t *fixed_size,
			uint8_t *byts, int64_t byts_cols, const int64_t *byts_off, const int64_t *byts_width,
			int64_t *blens, int64_t blens_cols)
{
	int64_t pos = 0;
	for (int64_t i = 0; i < nrec; i++) {
		for (int64_t f = 0; f < nfields; f++) {
			int64_t s = slots[f], v;
			int rc;
			switch (kinds[f]) {
			case KIND_VARINT:
				rc = get_varint(buf, len, &pos, &v);
				if (rc)
					return rc;
				ints[i * ints_cols + s] = v;
				break;
			case KIND_FIXED: {
				int64_t sz = fixed_size[s];
				if (len - pos < sz)
					return -1;
				memcpy(fixed + i * fixed_cols + fixed_off[s], buf + pos, (size_t)sz);
				pos += sz;
				break;
			}
			default:
				rc = get_varint(buf, len, &pos, &v);
				if (rc)
					return rc;
				if (v < 0)
					return -3;
				if (len - pos < v)
					return -1;
				blens[i * blens_cols + s] = v;
				memcpy(byts + i * byts_cols + byts_off[s], buf + pos,
				       (size_t)(v < byts_width[s] ? v : byts_width[s]));
				pos += v;
			}
		}
	}
	return pos;
}
