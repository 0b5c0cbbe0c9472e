/* libFuzzer harness: the packet block decoder, pkt_avro_decode (schemas/_codec.c), called the way
 * schemas/columns.py _decode_block calls it: the column matrices allocated for n records of a
 * layout, exactly sized (so that ASan sees any write past them), and one block of bytes.
 *
 * Input: byte 0 the mode, bytes 1-2 the payload width, byte 3 the record count, then
 *   mode % 3 == 0  the packet schema's layout (packet_layout.h, generated from schemas/packet.avsc
 *                  by fuzz/campaign.py through columns.py's own resolution);
 *   mode % 3 == 1  a writer's layout as the schema resolution lets through: 1..256 fields of
 *                  long, int, bytes or fixed(1..64), one byte each;
 *   mode % 3 == 2  the C function's own layout checks: slots, kinds, offsets and sizes taken raw from
 *                  the input, the destination described honestly (its true row widths and counts);
 * and the rest is the block. The record count obeys _decode_block's bound (a record takes at least
 * a byte per varint and bytes field plus its fixed bytes).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../schemas/_codec.c"
#include "input.h"
#include "packet_layout.h"

#define MAX_WIDTH 1024 /* columns.py MAX_WIDTH */
#define MAX_FIELDS 256 /* columns.py MAX_FIELDS */

struct layout {
	int64_t nfields;
	int64_t kinds[MAX_FIELDS];
	int64_t slots[MAX_FIELDS];
	int64_t sizes[MAX_FIELDS]; /* a fixed field's size, in field order */
};

/* The destination, as _decode_block allocates it (numpy's C-contiguous matrices). */
struct dest {
	int64_t n, ints_cols, fixed_cols, nfixed, byts_cols, nbyts, blens_cols;
	int64_t *ints, *fixed_off, *fixed_size, *byts_off, *byts_width, *blens;
	uint8_t *fixed, *byts;
};

/* The one call of the function under test (its signature changes here only). */
static int64_t decode_call(const uint8_t *buf, int64_t len, const struct layout *l, struct dest *d)
{
	return pkt_avro_decode(buf, len, d->n, l->nfields, l->kinds, l->slots, d->ints, d->ints_cols, d->fixed,
			       d->fixed_cols, d->fixed_off, d->fixed_size, d->nfixed, d->byts, d->byts_cols, d->byts_off,
			       d->byts_width, d->nbyts, d->blens, d->blens_cols);
}

static void *zalloc(int64_t count, size_t size)
{
	void *p = calloc((size_t)(count > 0 ? count : 1), size);
	if (!p)
		abort();
	return p;
}

static int is_varint(int64_t k)
{
	return k == KIND_VARINT || k == KIND_INT;
}

/* Slots numbered per kind in field order (int and long share the integer matrix), as columns.py. */
static void number_slots(struct layout *l)
{
	int64_t next[3] = { 0, 0, 0 };
	for (int64_t f = 0; f < l->nfields; f++) {
		int64_t k = is_varint(l->kinds[f]) ? KIND_VARINT : l->kinds[f];
		l->slots[f] = next[k]++;
	}
}

/* The matrices _decode_block allocates for n records of the layout; 0 when the bound on n
 * (n * min_record <= len) rules the call out. */
static int allocate(const struct layout *l, int64_t n, int64_t width, int64_t len, struct dest *d)
{
	int64_t nv = 0, nb = 0, nfx = 0, fixed_sum = 0;
	for (int64_t f = 0; f < l->nfields; f++) {
		if (is_varint(l->kinds[f]))
			nv++;
		else if (l->kinds[f] == KIND_BYTES)
			nb++;
		else {
			nfx++;
			fixed_sum += l->sizes[f];
		}
	}
	int64_t min_record = nv + nb + fixed_sum > 1 ? nv + nb + fixed_sum : 1;
	if (n * min_record > len)
		return 0;
	memset(d, 0, sizeof(*d));
	d->n = n;
	d->ints_cols = nv > 1 ? nv : 1;
	d->nfixed = nfx > 1 ? nfx : 1;
	d->fixed_size = zalloc(d->nfixed, sizeof(int64_t));
	d->fixed_off = zalloc(d->nfixed, sizeof(int64_t));
	for (int64_t f = 0, j = 0, off = 0; f < l->nfields; f++) {
		if (l->kinds[f] != KIND_FIXED)
			continue;
		d->fixed_size[j] = l->sizes[f];
		d->fixed_off[j++] = off;
		off += l->sizes[f];
	}
	d->fixed_cols = fixed_sum > 1 ? fixed_sum : 1;
	d->nbyts = nb > 1 ? nb : 1;
	d->byts_width = zalloc(d->nbyts, sizeof(int64_t));
	d->byts_off = zalloc(d->nbyts, sizeof(int64_t));
	for (int64_t j = 0; j < d->nbyts; j++) {
		d->byts_width[j] = width;
		d->byts_off[j] = j * width;
	}
	d->byts_cols = nb * width > 1 ? nb * width : 1;
	d->blens_cols = nb > 1 ? nb : 1;
	d->ints = zalloc(n * d->ints_cols, sizeof(int64_t));
	d->fixed = zalloc(n * d->fixed_cols, 1);
	d->byts = zalloc(n * d->byts_cols, 1);
	d->blens = zalloc(n * d->blens_cols, sizeof(int64_t));
	return 1;
}

static void release(struct dest *d)
{
	free(d->ints);
	free(d->fixed);
	free(d->byts);
	free(d->blens);
	free(d->fixed_off);
	free(d->fixed_size);
	free(d->byts_off);
	free(d->byts_width);
}

/* What the Python side relies on after a successful call: every record consumed within the
 * block, every kept bytes length non-negative and every int field within 32 bits. */
static void check_result(int64_t used, int64_t len, const struct layout *l, const struct dest *d)
{
	CHECK(used >= -5, "unknown error code %lld", (long long)used);
	if (used < 0)
		return;
	CHECK(used <= len, "consumed %lld of %lld bytes", (long long)used, (long long)len);
	for (int64_t i = 0; i < d->n; i++)
		for (int64_t f = 0; f < l->nfields; f++) {
			int64_t s = l->slots[f];
			if (l->kinds[f] == KIND_INT) {
				int64_t v = d->ints[i * d->ints_cols + s];
				CHECK(v >= INT32_MIN && v <= INT32_MAX, "int field %lld holds %lld", (long long)f,
				      (long long)v);
			} else if (l->kinds[f] == KIND_BYTES) {
				int64_t v = d->blens[i * d->blens_cols + s];
				CHECK(v >= 0 && v <= len, "bytes length %lld in a block of %lld", (long long)v,
				      (long long)len);
			}
		}
}

/* The relay's framing of the same block (pkt_avro_frame: each record as a message of its own, a
 * head before and a tail after it), into an output exactly as large as the caller makes it: it must
 * agree with the decoder on whether the block is n records of the layout. */
static void check_frame(const struct layout *l, int64_t n, const uint8_t *block, int64_t len, int64_t used)
{
	static const uint8_t head[5] = { 0, 0, 0, 1, 2 }, tail[3] = { 4, 'h', 'x' };
	int64_t cap = len + n * 8;
	uint8_t *out = zalloc(cap, 1);
	int64_t *ends = zalloc(n, sizeof(int64_t));
	int64_t got = pkt_avro_frame(block, len, n, l->nfields, l->kinds, l->sizes, head, 5, tail, 3, out, cap, ends);
	CHECK(got >= -6, "unknown frame error %lld", (long long)got);
	if (used == len) {
		CHECK(got == cap, "framed %lld bytes of %lld", (long long)got, (long long)cap);
		for (int64_t i = 0, at = 0; i < n; i++) {
			CHECK(ends[i] > at && ends[i] <= got, "record %lld ends at %lld", (long long)i, (long long)ends[i]);
			CHECK(memcmp(out + at, head, 5) == 0 && memcmp(out + ends[i] - 3, tail, 3) == 0,
			      "record %lld is not framed", (long long)i);
			at = ends[i];
		}
	} else {
		CHECK(got < 0, "framed a block the decoder refused (%lld)", (long long)used);
	}
	free(out);
	free(ends);
}

static void run_honest(struct layout *l, int64_t n, int64_t width, const uint8_t *block, int64_t len)
{
	number_slots(l);
	struct dest d;
	if (!allocate(l, n, width, len, &d))
		return;
	int64_t used = decode_call(block, len, l, &d);
	check_result(used, len, l, &d);
	check_frame(l, n, block, len, used);
	release(&d);
}

/* Mode 2: everything about the layout is hostile; the destination arrays are exactly as long as
 * the call says they are, so any access the checks let through past them is an ASan report. */
static void run_hostile(struct input *in, int64_t n, int64_t width)
{
	struct layout l;
	struct dest d;
	memset(&d, 0, sizeof(d));
	l.nfields = 1 + in_u8(in) % 8;
	d.n = n % 8;
	d.ints_cols = 1 + in_u8(in) % 4;
	d.nfixed = 1 + in_u8(in) % 4;
	d.fixed_cols = 1 + in_u8(in) % 40;
	d.nbyts = 1 + in_u8(in) % 3;
	d.byts_cols = 1 + (int64_t)(width % 300);
	d.blens_cols = 1 + in_u8(in) % 3;
	d.fixed_size = zalloc(d.nfixed, sizeof(int64_t));
	d.fixed_off = zalloc(d.nfixed, sizeof(int64_t));
	d.byts_width = zalloc(d.nbyts, sizeof(int64_t));
	d.byts_off = zalloc(d.nbyts, sizeof(int64_t));
	for (int64_t f = 0; f < l.nfields; f++) {
		uint8_t b = in_u8(in);
		l.kinds[f] = b % 5; /* 4: no such kind */
		l.slots[f] = (int8_t)in_u8(in);
	}
	/* small numbers mostly, any int64 sometimes: an overflow in the checks must show */
	for (int64_t j = 0; j < d.nfixed; j++) {
		d.fixed_size[j] = (in_u8(in) & 1) ? in_i64(in) : (int8_t)in_u8(in);
		d.fixed_off[j] = (in_u8(in) & 1) ? in_i64(in) : (int8_t)in_u8(in);
	}
	for (int64_t j = 0; j < d.nbyts; j++) {
		d.byts_width[j] = (in_u8(in) & 1) ? in_i64(in) : (int16_t)in_u16(in);
		d.byts_off[j] = (in_u8(in) & 1) ? in_i64(in) : (int16_t)in_u16(in);
	}
	d.ints = zalloc(d.n * d.ints_cols, sizeof(int64_t));
	d.fixed = zalloc(d.n * d.fixed_cols, 1);
	d.byts = zalloc(d.n * d.byts_cols, 1);
	d.blens = zalloc(d.n * d.blens_cols, sizeof(int64_t));
	int64_t len = (int64_t)in->left;
	uint8_t *block = malloc(len ? (size_t)len : 1);
	memcpy(block, in->p, (size_t)len);
	int64_t used = decode_call(block, len, &l, &d);
	CHECK(used >= -5 && used <= len, "returned %lld for a block of %lld", (long long)used, (long long)len);
	/* the framing loop under the same hostile kinds, hostile fixed sizes, and an output exactly as large
	 * as the record count and the data allow, or (the first byte of the block odd) smaller */
	int64_t sizes[8];
	for (int64_t f = 0; f < l.nfields; f++)
		sizes[f] = (int8_t)(len > f ? block[f] : 0);
	static const uint8_t head[5] = { 0, 0, 0, 0, 9 }, tail[1] = { 0 };
	int64_t cap = len + d.n * 6;
	if (len && (block[0] & 1))
		cap = cap / 2;
	uint8_t *out = zalloc(cap, 1);
	int64_t *ends = zalloc(d.n, sizeof(int64_t));
	int64_t got = pkt_avro_frame(block, len, d.n, l.nfields, l.kinds, sizes, head, 5, tail, 1, out, cap, ends);
	CHECK(got >= -6 && got <= cap, "framed %lld into %lld bytes", (long long)got, (long long)cap);
	free(out);
	free(ends);
	free(block);
	release(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };
	uint8_t mode = in_u8(&in);
	int64_t width = 1 + in_u16(&in) % MAX_WIDTH;
	int64_t n = in_u8(&in);
	struct layout l;
	if (mode % 3 == 0) {
		l.nfields = PACKET_NFIELDS;
		for (int64_t f = 0; f < l.nfields; f++) {
			l.kinds[f] = PACKET_KIND[f];
			l.sizes[f] = PACKET_SIZE[f];
		}
	} else if (mode % 3 == 1) {
		l.nfields = 1 + in_u8(&in) % MAX_FIELDS;
		for (int64_t f = 0; f < l.nfields; f++) {
			uint8_t b = in_u8(&in);
			static const int64_t KINDS[4] = { KIND_VARINT, KIND_INT, KIND_BYTES, KIND_FIXED };
			l.kinds[f] = KINDS[b % 4];
			l.sizes[f] = l.kinds[f] == KIND_FIXED ? 1 + (b >> 2) % 64 : 0;
		}
	} else {
		run_hostile(&in, n, width);
		return 0;
	}
	/* the block in a buffer of its own size: a read past it is an ASan report */
	int64_t len = (int64_t)in.left;
	uint8_t *block = malloc(len ? (size_t)len : 1);
	memcpy(block, in.p, (size_t)len);
	run_honest(&l, n, width, block, len);
	free(block);
	return 0;
}
