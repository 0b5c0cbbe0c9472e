/* Group-by with sums for the alerts consumer's window tables (pktstream/consumers/engine/agg.py).
 *
 * A table is a set of groups keyed by (k, item, o), stored column-wise in arrays the caller owns,
 * with an open-addressing index (linear probing; slot = group index + 1, 0 = empty; the caller
 * keeps it at most half full). Adding a batch of rows sums n and b into each row's group, keeps
 * the least t0 and greatest t1, the greatest r and the least f, and the group's "sample" fields (sub,
 * s, and the feature row the caller keeps) from its earliest row (the first one added among equally
 * early rows). Plain C,
 * called through ctypes; every index is bounded by the capacities the caller passes.
 */
#include <stdint.h>

static inline uint64_t key_hash(uint64_t k, uint64_t item, int64_t o)
{
	uint64_t z = k ^ (item * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)o * 0xC2B2AE3D27D4EB4FULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* The group of key (k, item, o), or -1; *slot: where it is, or the empty slot where it would go. */
static inline int64_t probe(int64_t k, int64_t item, int64_t o, int64_t mask, const int64_t *slots, const int64_t *gk,
			    const int64_t *gitem, const int64_t *go, int64_t *slot)
{
	int64_t i = (int64_t)(key_hash((uint64_t)k, (uint64_t)item, o) & (uint64_t)mask);
	for (;;) {
		int64_t v = slots[i];
		if (v == 0)
			break;
		if (gk[v - 1] == k && gitem[v - 1] == item && go[v - 1] == o) {
			*slot = i;
			return v - 1;
		}
		i = (i + 1) & mask;
	}
	*slot = i;
	return -1;
}

/* The columns of a batch (in, 10 rows of m) and of the groups (g, 11 rows of cap), as int64. */
enum { I_K, I_ITEM, I_O, I_N, I_B, I_T, I_SUB, I_S, I_R, I_F };
enum { G_K, G_ITEM, G_O, G_N, G_B, G_T0, G_T1, G_SUB, G_S, G_R, G_F };

/* Rows [0, m) of in added to the table of *ng groups (capacity cap, index of mask + 1 slots).
 * Stops before a row that would need a group beyond cap; returns the number of rows added.
 * key_only: the rows are grouped by k and o alone (item, n, b, r and f taken as 0): a table of
 * one sample per key and capture point, from the same batch.
 * gid (out, may be 0): each row's group. pick (out, may be 0): for each row, the group whose
 * sample it becomes, else -1; a row that a later row of the same batch displaces gets -1 again
 * (gpick: per group, -1 between calls, used to find it). */
int64_t pkt_agg_add(int64_t m, const int64_t *in, int64_t key_only, int64_t mask, int64_t *slots, int64_t *ng,
		    int64_t cap, int64_t *gcols, int64_t *gpick, int64_t *gid, int64_t *pick)
{
	const int64_t *k = in + I_K * m, *item = in + I_ITEM * m, *o = in + I_O * m, *n = in + I_N * m;
	const int64_t *b = in + I_B * m, *t = in + I_T * m, *sub = in + I_SUB * m, *s = in + I_S * m;
	const int64_t *r = in + I_R * m, *f = in + I_F * m;
	int64_t *gk = gcols + G_K * cap, *gitem = gcols + G_ITEM * cap, *go = gcols + G_O * cap;
	int64_t *gn = gcols + G_N * cap, *gb = gcols + G_B * cap, *gt0 = gcols + G_T0 * cap;
	int64_t *gt1 = gcols + G_T1 * cap, *gsub = gcols + G_SUB * cap, *gs = gcols + G_S * cap;
	int64_t *gr = gcols + G_R * cap, *gf = gcols + G_F * cap;
	int64_t i, done = m;
	int64_t groups = *ng;
	static const int64_t zero = 0;
	int64_t step = 1;
	if (key_only) { /* item, n, b, sub, r, f: a zero each (step 0); s: -1 */
		item = n = b = sub = r = f = &zero;
		step = 0;
	}
	for (i = 0; i < m; i++) {
		int64_t slot, ia = i * step;
		int64_t g = probe(k[i], item[ia], o[i], mask, slots, gk, gitem, go, &slot);
		if (g < 0) {
			if (groups >= cap) {
				done = i;
				break;
			}
			g = groups++;
			slots[slot] = g + 1;
			gk[g] = k[i];
			gitem[g] = item[ia];
			go[g] = o[i];
			gn[g] = n[ia];
			gb[g] = b[ia];
			gt0[g] = t[i];
			gt1[g] = t[i];
			gsub[g] = sub[ia];
			gs[g] = key_only ? -1 : s[i];
			gr[g] = r[ia];
			gf[g] = f[ia];
			gpick[g] = -1;
		} else {
			gn[g] += n[ia];
			gb[g] += b[ia];
			if (r[ia] > gr[g])
				gr[g] = r[ia];
			if (f[ia] < gf[g])
				gf[g] = f[ia];
			if (t[i] > gt1[g])
				gt1[g] = t[i];
			if (t[i] >= gt0[g]) {
				if (gid)
					gid[i] = g;
				if (pick)
					pick[i] = -1;
				continue;
			}
			gt0[g] = t[i];
			gsub[g] = sub[ia];
			gs[g] = key_only ? -1 : s[i];
		}
		if (gid)
			gid[i] = g;
		if (pick) {
			if (gpick[g] >= 0)
				pick[gpick[g]] = -1;
			gpick[g] = i;
			pick[i] = g;
		}
	}
	if (pick) {
		for (i = 0; i < done; i++)
			if (pick[i] >= 0)
				gpick[pick[i]] = -1;
	}
	*ng = groups;
	return done;
}

/* The index of groups [0, ng) rebuilt in slots (mask + 1 of them, zeroed by the caller). */
void pkt_agg_index(int64_t ng, const int64_t *gcols, int64_t cap, int64_t mask, int64_t *slots)
{
	const int64_t *gk = gcols + G_K * cap, *gitem = gcols + G_ITEM * cap, *go = gcols + G_O * cap;
	for (int64_t g = 0; g < ng; g++) {
		int64_t slot = (int64_t)(key_hash((uint64_t)gk[g], (uint64_t)gitem[g], go[g]) & (uint64_t)mask);
		while (slots[slot] != 0)
			slot = (slot + 1) & mask;
		slots[slot] = g + 1;
	}
}

/* For each of m keys (in: rows k, item, o of m), its group, or -1 when the table has none. */
void pkt_agg_find(int64_t m, const int64_t *in, int64_t mask, const int64_t *slots, const int64_t *gcols, int64_t cap,
		  int64_t *gid)
{
	const int64_t *k = in + I_K * m, *item = in + I_ITEM * m, *o = in + I_O * m;
	const int64_t *gk = gcols + G_K * cap, *gitem = gcols + G_ITEM * cap, *go = gcols + G_O * cap;
	int64_t slot;
	for (int64_t i = 0; i < m; i++)
		gid[i] = probe(k[i], item[i], o[i], mask, slots, gk, gitem, go, &slot);
}
