//! Choosing which frames of a video the model sees.

/// Indices of the `wanted` frames to keep out of `total`, in increasing order.
///
/// When `total <= wanted` every frame is kept (`0..total`); the model then sees fewer frames than
/// it was trained with. Otherwise the video is cut into `wanted` segments of equal length
/// `total / wanted` and the frame at the centre of each is taken: frame
/// `floor((i + 1/2) * total / wanted)` for `i` in `0..wanted`, computed exactly in integers. The
/// indices are strictly increasing (segments are longer than one frame), spread over the whole
/// length, and do not depend on anything but `total` and `wanted`: the same video always gives
/// the same frames.
pub fn sample_frame_indices(total: usize, wanted: usize) -> Vec<usize> {
    if total <= wanted {
        return (0..total).collect();
    }
    // (2i + 1) * total / (2 * wanted) in u128, so no product can overflow.
    let (total_w, wanted_w) = (total as u128, wanted as u128);
    (0..wanted_w).map(|i| ((2 * i + 1) * total_w / (2 * wanted_w)) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_when_there_are_few_frames() {
        assert_eq!(sample_frame_indices(0, 6), Vec::<usize>::new());
        assert_eq!(sample_frame_indices(1, 6), vec![0]);
        assert_eq!(sample_frame_indices(3, 6), vec![0, 1, 2]);
        assert_eq!(sample_frame_indices(6, 6), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(sample_frame_indices(5, 0), Vec::<usize>::new());
    }

    #[test]
    fn takes_segment_centres() {
        assert_eq!(sample_frame_indices(9, 6), vec![0, 2, 3, 5, 6, 8]);
        assert_eq!(sample_frame_indices(12, 6), vec![1, 3, 5, 7, 9, 11]);
        assert_eq!(sample_frame_indices(60, 6), vec![5, 15, 25, 35, 45, 55]);
        assert_eq!(sample_frame_indices(7, 1), vec![3]);
        assert_eq!(sample_frame_indices(8, 1), vec![4]);
        assert_eq!(sample_frame_indices(2, 1), vec![1]);
    }

    #[test]
    fn strictly_increasing_and_in_range() {
        for total in 1..200 {
            for wanted in 1..=total.min(40) {
                let idx = sample_frame_indices(total, wanted);
                assert_eq!(idx.len(), wanted.min(total));
                assert!(idx.windows(2).all(|w| w[0] < w[1]), "{total} {wanted}: {idx:?}");
                assert!(*idx.last().unwrap() < total);
            }
        }
        let huge = sample_frame_indices(usize::MAX, 3);
        assert!(huge.windows(2).all(|w| w[0] < w[1]));
    }
}
