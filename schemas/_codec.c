/* The packet topic's Avro block codec, called through ctypes (no Python API used).
 *
 * pkt_avro_encode writes the Avro binary encoding of n records, field after
 * field, from column matrices. Its output is byte-for-byte what fastavro's
 * schemaless_writer writes (tests/unit/test_avro.py proves it); pkt_avro_decode
 * reads such blocks back into the same columns (tests/unit/test_columns.py).
 */
#include <stdint.h>
#include <string.h>

enum { KIND_VARINT = 0, KIND_FIXED = 1, KIND_BYTES = 2, KIND_INT = 3 };

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
			case KIND_INT:
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
 * The layout comes from a writer's schema (untrusted), so it is checked against the destination
 * first: every slot within its matrix, every fixed size and bytes width non-negative and inside
 * its row (nfixed and nbyts: the lengths of the fixed_* and byts_* arrays). A bytes value longer
 * than its column's width is cut to the width; its full length is kept in blens. KIND_INT is a
 * varint that must fit 32 bits (an Avro int). Returns the bytes consumed, or a negative error:
 * -1 data ends inside a record, -2 a varint longer than 10 bytes, -3 a negative bytes length,
 * -4 a layout that does not fit the destination, -5 an int out of the 32-bit range.
 * Never reads past len, never writes past a matrix. */
int64_t pkt_avro_decode(const uint8_t *buf, int64_t len, int64_t nrec, int64_t nfields, const int64_t *kinds,
			const int64_t *slots, int64_t *ints, int64_t ints_cols,
			uint8_t *fixed, int64_t fixed_cols, const int64_t *fixed_off, const int64_t *fixed_size,
			int64_t nfixed, uint8_t *byts, int64_t byts_cols, const int64_t *byts_off,
			const int64_t *byts_width, int64_t nbyts, int64_t *blens, int64_t blens_cols)
{
	if (nrec < 0 || nfields < 0 || len < 0)
		return -4;
	for (int64_t f = 0; f < nfields; f++) {
		int64_t s = slots[f];
		if (s < 0)
			return -4;
		switch (kinds[f]) {
		case KIND_VARINT:
		case KIND_INT:
			if (s >= ints_cols)
				return -4;
			break;
		case KIND_FIXED:
			if (s >= nfixed || fixed_size[s] < 0 || fixed_off[s] < 0 ||
			    fixed_off[s] > fixed_cols - fixed_size[s])
				return -4;
			break;
		case KIND_BYTES:
			if (s >= nbyts || s >= blens_cols || byts_width[s] < 0 || byts_off[s] < 0 ||
			    byts_off[s] > byts_cols - byts_width[s])
				return -4;
			break;
		default:
			return -4;
		}
	}
	int64_t pos = 0;
	for (int64_t i = 0; i < nrec; i++) {
		for (int64_t f = 0; f < nfields; f++) {
			int64_t s = slots[f], v;
			int rc;
			switch (kinds[f]) {
			case KIND_VARINT:
			case KIND_INT:
				rc = get_varint(buf, len, &pos, &v);
				if (rc)
					return rc;
				if (kinds[f] == KIND_INT && (v < INT32_MIN || v > INT32_MAX))
					return -5;
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

/* ---- the schema-registry wire format ---------------------------------------------------- */

/* Each of nrec records of a block (the field layout: kinds, and each fixed field's size in sizes)
 * as a message of its own: head (head_len bytes: 0x00 and the schema id) | the record | tail
 * (tail_len bytes: fields the message adds after the record's), one after another into out, the
 * end of each in ends[i]. Returns the bytes written, or -1 when the data ends inside a record or
 * out would overflow, -2 a varint longer than 10 bytes, -3 a negative bytes length, -4 a bad
 * layout, -5 bytes after the last record, -6 an int field's value outside 32 bits. Never reads
 * past len, never writes past out_cap. */
int64_t pkt_avro_frame(const uint8_t *buf, int64_t len, int64_t nrec, int64_t nfields, const int64_t *kinds,
		       const int64_t *sizes, const uint8_t *head, int64_t head_len, const uint8_t *tail,
		       int64_t tail_len, uint8_t *out, int64_t out_cap, int64_t *ends)
{
	if (nrec < 0 || nfields < 0 || len < 0 || head_len < 0 || tail_len < 0 || out_cap < 0)
		return -4;
	int64_t pos = 0, at = 0;
	for (int64_t i = 0; i < nrec; i++) {
		int64_t start = pos;
		for (int64_t f = 0; f < nfields; f++) {
			int64_t v;
			int rc;
			switch (kinds[f]) {
			case KIND_VARINT:
			case KIND_INT:
				rc = get_varint(buf, len, &pos, &v);
				if (rc)
					return rc;
				if (kinds[f] == KIND_INT && (v < INT32_MIN || v > INT32_MAX))
					return -6;
				break;
			case KIND_FIXED:
				if (sizes[f] < 0)
					return -4;
				if (len - pos < sizes[f])
					return -1;
				pos += sizes[f];
				break;
			case KIND_BYTES:
				rc = get_varint(buf, len, &pos, &v);
				if (rc)
					return rc;
				if (v < 0)
					return -3;
				if (len - pos < v)
					return -1;
				pos += v;
				break;
			default:
				return -4;
			}
		}
		int64_t size = pos - start;
		if (out_cap - at < head_len || out_cap - at - head_len < size ||
		    out_cap - at - head_len - size < tail_len)
			return -1;
		memcpy(out + at, head, (size_t)head_len);
		memcpy(out + at + head_len, buf + start, (size_t)size);
		memcpy(out + at + head_len + size, tail, (size_t)tail_len);
		at += head_len + size + tail_len;
		ends[i] = at;
	}
	return pos == len ? at : -5;
}
