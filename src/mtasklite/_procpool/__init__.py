"""The machinery under ``StatefulProcessPoolExecutor``: owned worker slots, one dispatcher.

How one task travels (the module that owns each step in brackets):

  callers                       dispatcher thread                        worker i
 ---------                     -------------------                      ----------
 submit / imap chunk
   | checks, makes a Job          [process_pool]
   |   (an untimed submit finding a slot idle while the dispatcher waits sends its Run
   v    straight down that slot's pipe instead: Dispatcher.hand_off)
 Backlog of Pieces   --------->  waits on everything at once  [dispatcher, waiting]
   [jobs]     (+ a wakeup byte)    - the wakeup pipe
                                   - each slot's pipe
                                   - each process sentinel
                                   - the nearest deadline
                                 takes a piece for an idle slot,
                                 pickles it as a Run      [courier, jobs]
                                      |                                  reads the Run,
                                      +===== pipe: Run =============>    runs its items,
                                      +-- runs arena i (big buffers) -->  names the running
                                 <===== pipe: Results, Ready, ... =====  item in its cell
                                 <-- results arena i (big buffers) ---   [child]
                                 records outcomes, settles the job's
                                 future                   [courier, jobs]
                                 reads cell i  <---- progress cell i ----  (shared memory,
                                                     [wire]                 no message)
                                 on a death or overrun: judges who is
                                 charged, what runs again, whether the
                                 slot respawns or the pool breaks
                                                 [blame: pure verdicts]
                                 and applies it   [dispatcher, slots]

Three channels link the dispatcher and worker *i*: its pipe (messages, see ``wire``), its
progress cell (what it is running right now, readable after it died), and a shared-memory
arena per direction (``_shm``): the out-of-band pickle buffers of a message at or above
``shm_threshold`` (numpy arrays, ``PickleBuffer``) are written there and the pipe carries
only the rest of the pickle and, when an arena is new, its descriptor.  The arenas belong to
the slot's Sender/Receiver pair (``slots``), replaced with each process and closed when it
is reaped or retired and when the dispatcher closes.  Slot *i* always runs
worker spec *i*; it has at most two Runs outstanding (``piece`` and ``next_piece``) and
runs them in order, so no message needs a task id.

Modules, each importing only those above it:

- ``wire``: messages, progress cells, (un)pickling;  ``child``: the worker process's loop;
  ``salvage``: what can still be read of a batch of results that does not unpickle;
  ``groups``: each worker leads a process group, signalled as a whole (nothing a task starts
  outlives its worker);  ``memory``: resident memory (per-slot counters live in
  ``mtasklite._worker_stats``, shared with the thread and Dask executors).
- ``jobs``: job, piece, backlog, pickling a piece into a Run (big buffers into the slot's
  arena; a Run too big to send ahead is withdrawn from it, ``Courier.send_ahead``).
- ``slots``: slot states, the slot table (start, stop, retire, reap), the prefetch rule.
- ``blame``: pure functions from what happened to a verdict, and the errors they raise.
- ``waiting`` and ``control``: how the dispatcher sleeps and is woken, and the state it
  shares with the executor (backlog, life-cycle flags, the broken verdict).
- ``courier``: the conversation over the pipes;  ``dispatcher``: the loop, deaths, overruns.

Who touches what: callers add to the backlog and start never-started slots (so ``submit``
grows the pool synchronously, as the stdlib does) under the pool's lock.  Once a slot has
started, only the holder of ``SlotTable.handoff`` touches it or writes its pipe: the
dispatcher thread, which holds it except while it waits, or, while it waits, a thread that
submits an untimed task and finds a slot idle and nothing queued: it sends the Run itself
(``Dispatcher.hand_off``), sparing the wakeup and a round of the loop.  Callers only try the
lock, outside the pool's lock (pickling runs user code, which may call back into the pool);
a caller that does not get it queues the task.  Only the dispatcher reads the pipes.
Callers that start a worker wake the dispatcher, which must wait on it too.  A wakeup
writes a byte only while the dispatcher may sleep: it arms the wakeup pipe before it reads
what callers change (``waiting.WakeupPipe``).

Races, and where they are settled:

- a future cancelled while queued is skipped when its piece is taken (``Job.claim``); once
  sent it runs, unless ``cancel_running`` stops its worker (``Courier.stop_cancelled``);
- a worker dies with work outstanding: its pipe is drained first, so results it sent
  before dying count (a message whose arena descriptor never follows was sent by the dead:
  it is dropped); then ``blame.judge_death`` decides from its cell what is charged;
- a worker is stopped (an overrun, a cancel, ``terminate()``): SIGTERM raises
  ``WorkerStopping`` in its task, which unwinds and closes the worker's object; SIGKILL to
  its group follows after ``stop_grace``, as it does for a worker told to exit (shutdown,
  recycling by task count or memory) that is still closing its object by then;
- a timed item overruns: it fails at once and the worker is stopped; results of earlier
  items still arriving are kept, later ones dropped and re-run (``Dispatcher._overrun``);
- ``terminate()`` signals the workers from the caller's thread; the dispatcher, seeing a
  death while termination is requested, aborts everything instead of judging a crash;
- a sentinel or pipe hangs up while its process runs on (a task closed its descriptors), or
  stays open after the process died (a process it forked holds it): a death is confirmed by
  pid (``Dispatcher._poll_deaths``), and the dispatcher never blocks on one worker.
"""
