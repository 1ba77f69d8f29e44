//! libtorch's OpenMP runtime (libgomp), found among the libraries already loaded, so that
//! gitcap's own decoding loops ([`super::matvec`], [`super::step_attention`]) run on the
//! threads libtorch's own parallel regions use: a thread of gitcap's own would compete with
//! libgomp's worker, which spin-waits on the other core between the step's small parallel
//! regions (see `ModelWorker::load`).

use std::ffi::{c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type Body = unsafe extern "C" fn(*mut c_void);

pub struct Team {
    /// `GOMP_parallel(fn, data, num_threads, flags)`: what `#pragma omp parallel` compiles to.
    parallel: unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint),
    thread_num: unsafe extern "C" fn() -> c_int,
    num_threads: unsafe extern "C" fn() -> c_int,
}

impl Team {
    /// The runtime, if this process has libgomp loaded (libtorch's CPU builds link it).
    pub fn get() -> Option<&'static Team> {
        static TEAM: OnceLock<Option<Team>> = OnceLock::new();
        TEAM.get_or_init(|| {
            let find = |name: &CStr| {
                // SAFETY: dlsym with a NUL-terminated name; null when absent.
                let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                (!symbol.is_null()).then_some(symbol)
            };
            let (parallel, thread_num, num_threads) =
                (find(c"GOMP_parallel")?, find(c"omp_get_thread_num")?, find(c"omp_get_num_threads")?);
            // SAFETY: libgomp's documented signatures.
            unsafe {
                Some(Team {
                    parallel: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint),
                    >(parallel),
                    thread_num: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(thread_num),
                    num_threads: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(num_threads),
                })
            }
        })
        .as_ref()
    }

    /// Runs `work(thread, threads)` on up to `threads` threads of the calling thread's team
    /// (this thread is thread 0), returning when every one has finished.
    pub fn run(&self, threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
        struct Call<'a> {
            team: &'a Team,
            work: &'a (dyn Fn(usize, usize) + Sync),
        }
        unsafe extern "C" fn body(data: *mut c_void) {
            // SAFETY: `data` is the `Call` below, alive until GOMP_parallel returns.
            let call = unsafe { &*(data as *const Call) };
            let (thread, of) = unsafe { ((call.team.thread_num)(), (call.team.num_threads)()) };
            (call.work)(thread.max(0) as usize, of.max(1) as usize);
        }
        let call = Call { team: self, work };
        // SAFETY: `body` reads `call` only while GOMP_parallel runs; flags 0 = no proc_bind.
        unsafe { (self.parallel)(body, &call as *const Call as *mut c_void, threads as c_uint, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's CPU build links libgomp, and its team runs the work on every thread asked for.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_work_runs_on_each_thread_of_libtorchs_openmp_team_once() {
        let team = Team::get().expect("libgomp is loaded with libtorch");
        let seen = std::sync::Mutex::new(Vec::new());
        team.run(2, &|thread, of| seen.lock().unwrap().push((thread, of)));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, [(0, 2), (1, 2)]);
    }
}
