//! Comparing two rankings of the same query made in two id spaces.

/// Checks two rankings `(chunk id, score)` agree: same length, scores equal
/// to a relative `tolerance` at every position, and the same chunk wherever
/// that chunk's score is not (to the tolerance) tied with a neighbour's (at
/// the last place, with the first hit the cut left out, which is not seen).
///
/// Exact model transforms make most scores bitwise equal; the exceptions are
/// float reassociation (BM25 sums terms in dictionary order, the rotation `R`
/// reorders a dot product), which can swap chunks whose scores are that close.
pub fn compare_rankings(
    p: &[(String, f32)],
    e: &[(String, f32)],
    tolerance: f32,
) -> Result<(), String> {
    compare_rankings_with_floor(p, e, tolerance, 0.0)
}

/// [`compare_rankings`] where scores closer than `tolerance × max(|a|, |b|,
/// floor)` count as equal: with `floor = 1`, cosine similarities near zero
/// (whose rounding error is absolute, not relative) are compared sensibly.
pub fn compare_rankings_with_floor(
    p: &[(String, f32)],
    e: &[(String, f32)],
    tolerance: f32,
    floor: f32,
) -> Result<(), String> {
    if p.len() != e.len() {
        return Err(format!("{} hits vs {}", p.len(), e.len()));
    }
    let close = |a: f32, b: f32| (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(floor);
    for (i, (a, b)) in p.iter().zip(e).enumerate() {
        if !close(a.1, b.1) {
            return Err(format!("position {i}: {a:?} vs {b:?}"));
        }
        if a.0 != b.0 {
            let tied = |j: usize| p.get(j).is_some_and(|n| close(n.1, a.1));
            // At the last place, the tie may be with a hit the cut left out.
            let last = i + 1 == p.len();
            if !((i > 0 && tied(i - 1)) || tied(i + 1) || last) {
                return Err(format!(
                    "position {i}: {a:?} vs {b:?}, and no tie explains the swap"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &[(&str, f32)]) -> Vec<(String, f32)> {
        v.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    #[test]
    fn near_ties_may_swap_nothing_else_may() {
        let p = r(&[("a", 3.0), ("b", 2.0), ("c", 2.0000001)]);
        let swapped = r(&[("a", 3.0), ("c", 2.0000001), ("b", 2.0)]);
        assert!(compare_rankings(&p, &swapped, 1e-6).is_ok());
        let wrong = r(&[("b", 3.0), ("a", 2.0), ("c", 2.0)]);
        assert!(compare_rankings(&p, &wrong, 1e-6).is_err());
        assert!(compare_rankings(&p, &p[..2], 1e-6).is_err());
        // The last place may hold either of two hits tied across the cut.
        let cut = r(&[("a", 3.0), ("c", 2.0)]);
        assert!(compare_rankings(&p[..2], &cut, 1e-6).is_ok());
        let off = r(&[("a", 3.1), ("b", 2.0), ("c", 2.0)]);
        assert!(compare_rankings(&p, &off, 1e-6).is_err());
    }
}
