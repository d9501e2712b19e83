#!/usr/bin/env bash
# The whole study in one command: every experiment of the question, ViT and ResNet-18 side by side on the
# same data (same seed, same subset). Finished runs are skipped and interrupted ones resumed, so running it
# again after a crash only does what is missing. Then: python analyze.py RUNS_DIR
# PYTHON names the interpreter its commands use (default python3; e.g. .venv/bin/python).
set -uo pipefail
set -f  # no file-name globbing: every word here is meant literally

EXPERIMENTS="regimes data-efficiency shallow locality attention attention-cost matched-params matched-time transfer
truncation attention-swap distillation recipes train-speed binary"
EXPERIMENTS=${EXPERIMENTS//$'\n'/ }
profile="" seeds="" gpus=0 dry_run=0 only="" runs="" data_dir=data time_budget="" jobs=1 devices=""
python=${PYTHON:-python3}

usage() {
    cat <<EOF
usage: bash run_all.sh [--profile full|quick|cpu] [--seeds 0,1,2] [--gpus N] [--dry-run] [--only EXP[,EXP]]
                       [--runs DIR] [--data-dir DIR] [--time-budget SECONDS] [--jobs N] [--devices LIST]

  --profile full    the real study, meant for a GPU (the default where torch sees one): 200 epochs, 3 seeds
  --profile cpu     a first answer on 2 CPU cores in about 40 minutes (the default without a GPU): data
                    efficiency on real CIFAR-10 (25, 50, 100 images per class), small ViT and ResNet, 25 epochs,
                    3 seeds; needs DATA_DIR/cifar-10-batches-py
  --profile quick   the same grid shrunk (tiny models, 3 epochs, 50 images per class, 1 seed) to finish on a
                    2-core CPU in minutes; on CIFAR-10 if DATA_DIR/cifar-10-batches-py exists, else on synthetic
  --seeds LIST      comma-separated seeds (default: 0,1,2 full and cpu, 0 quick)
  --gpus N          run each job with torchrun --nproc_per_node=N (time-budget jobs stay single-process)
  --dry-run         print every command without running it ('# done' marks finished runs)
  --only LIST       run only these experiments (default: all; cpu: data-efficiency): ${EXPERIMENTS// /, }
  --runs DIR        where run folders go (default: runs/PROFILE)
  --data-dir DIR    where the CIFAR folders are (default: data)
  --time-budget S   seconds of training per model in matched-time (default: 1200 full, 120 cpu, 20 quick)
  --jobs N          run N jobs side by side (default 1: one after another, output on the terminal); each job's
                    output goes to its run folder's train.log, one line says when it starts and ends. A job
                    waits for the runs it starts from or learns from; time-budget jobs and the benchmark run alone
  --devices LIST    comma-separated GPU indices: job slot k runs with CUDA_VISIBLE_DEVICES=LIST[k mod length]
                    (default: CUDA_VISIBLE_DEVICES left as it is)
EOF
}
die() { echo "run_all.sh: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift ;;
        --profile|--seeds|--gpus|--only|--runs|--data-dir|--time-budget|--jobs|--devices)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --profile) profile=$2 ;; --seeds) seeds=$2 ;; --gpus) gpus=$2 ;; --only) only=$2 ;;
                --runs) runs=$2 ;; --data-dir) data_dir=$2 ;; --time-budget) time_budget=$2 ;;
                --jobs) jobs=$2 ;; --devices) devices=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown argument '$1'; see bash run_all.sh --help" ;;
    esac
done

# Paths given on the command line are relative to where the user is; defaults are relative to the repository.
[ -n "$runs" ] && runs=$(realpath -m "$runs")
[ "$data_dir" != data ] && data_dir=$(realpath -m "$data_dir")
cd "$(dirname "$0")" || exit 2

case "$profile" in ""|full|quick|cpu) ;; *) die "--profile '$profile' is not one of full, quick, cpu" ;; esac
[ -z "$time_budget" ] || [[ "$time_budget" =~ ^[0-9]+([.][0-9]+)?$ ]] ||
    die "--time-budget '$time_budget' is not a number of seconds"
[[ "$gpus" =~ ^[0-9]+$ ]] || die "--gpus '$gpus' is not a whole number"
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs '$jobs' is not a whole number of at least 1"
[ -z "$devices" ] || [[ "$devices" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    die "--devices '$devices' is not a comma-separated list of GPU indices, e.g. 0,1,2,3"
# A torchrun job of --gpus N > 1 takes N GPUs of its own: handing each job slot one GPU would starve it, and
# several such jobs would need N GPUs each. Spread single-GPU jobs instead (--gpus 0 or 1 with --jobs, --devices).
[ "$gpus" -gt 1 ] && [ "$jobs" -gt 1 ] && die "--jobs $jobs with --gpus $gpus: each job already takes $gpus GPUs; \
use --jobs 1, or --gpus 0 or 1 to run single-GPU jobs side by side"
[ "$gpus" -gt 1 ] && [ -n "$devices" ] && die "--devices '$devices' with --gpus $gpus: a job slot gets one GPU \
but each job takes $gpus; use --gpus 0 or 1 with --devices"
IFS=, read -ra device_list <<< "$devices"
[ -z "$seeds" ] || [[ "$seeds" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    die "--seeds '$seeds' is not a comma-separated list of whole numbers"
if [ -n "$only" ]; then
    [ -n "${only//,/}" ] || die "--only '$only' names no experiment; choose from ${EXPERIMENTS// /, }"
    for e in ${only//,/ }; do
        [[ " $EXPERIMENTS " == *" $e "* ]] || die "unknown experiment '$e'; choose from ${EXPERIMENTS// /, }"
    done
fi

# Without --profile: full where torch sees a CUDA GPU, else cpu. Asked of $python, the jobs' own interpreter, as
# train.py's --device auto asks it (nvidia-smi would see a GPU that a CPU-only torch build cannot use).
chosen=""
if [ -z "$profile" ]; then
    cuda=$("$python" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null) ||
        die "$python cannot import torch; run $python -c 'import torch' to see why, or give --profile"
    case "$cuda" in
        True) profile=full chosen="torch sees a CUDA GPU" ;;
        False) profile=cpu chosen="torch sees no CUDA GPU" ;;
        *) die "$python printed '$cuda' for torch.cuda.is_available(), not True or False; give --profile" ;;
    esac
    echo "profile: $profile ($chosen; --profile full, cpu or quick chooses)"
fi
[ "$profile" = cpu ] && [ ! -d "$data_dir/cifar-10-batches-py" ] && die "--profile cpu needs the real CIFAR-10 at \
$data_dir/cifar-10-batches-py (see Data in README.md), or choose --profile quick (synthetic data without it) or full"
[ -z "$seeds" ] && { [ "$profile" = quick ] && seeds=0 || seeds=0,1,2; }
seeds=$(for s in ${seeds//,/ }; do echo $((10#$s)); done | awk '!seen[$0]++' | paste -sd,)  # 00 is seed 0, once
[ "$profile" = cpu ] && only=${only:-data-efficiency}  # what fits 40 minutes (see the cpu settings below)
only=${only:-${EXPERIMENTS// /,}}
wants() { [[ ",$only," == *",$1,"* ]]; }
runs=${runs:-runs/$profile}
# Run names do not carry the profile: one runs folder holds one profile, or finished quick runs would pass as full.
held=$(cat "$runs/PROFILE" 2>/dev/null)
if [ -n "$held" ] && [ "$held" != "$profile" ]; then
    die "$runs holds --profile $held runs; use another --runs folder for --profile $profile${chosen:+ ($chosen; \
give --profile $held to go on with them)}"
fi
if [ "$dry_run" = 0 ]; then mkdir -p "$runs" && echo "$profile" > "$runs/PROFILE"; fi

# ---------------------------------------------------------------- profile settings
if [ "$profile" = full ]; then
    dataset=cifar10
    common=(--epochs 200 --data-dir "$data_dir")
    fractions="0.01 0.02 0.05 0.1 0.2 0.5"
    locality_fractions="0.02 0.1 0.5"  # plus the standard regime (100%)
    radii="1 2 3 4"
    dilations="2 3"
    bench=()  # bench-attention's defaults: the vit preset's width, 65 to 4097 tokens
    bench_train=()  # bench-train's defaults: vit, timm's ViT, vit-11m and ResNet-18, compiled and not, batch 128
    corruptions=""  # all of them
    budget=1200
    finetune=(--epochs 50)  # fine-tuning is short: AugReg fine-tunes CIFAR for about 100 epochs of 50,000 images
    imagenet_size=224  # the resolution torchvision's ImageNet weights were trained at
    truncate_vit="1 2 3 4 5" truncate_resnet="1 2 3"  # and all of them: the untruncated fine-tune
    recipes="none light1 light2 medium1 medium2 strong1 strong2 deit"
    recipe_fractions="0.02 0.1 0.5"  # plus the standard regime (100%)
    binary_regimes="standard sparse imbalanced corrupted"
    binary_vit=""  # the vit preset: --pyramid's 8 heads, 4+ blocks and a width divisible by 4
    declare -A size=([vit]="" [vit-shallow]="" [vit-11m]="" [resnet18]="" [resnet18-shallow]="" [vit-b16]="")
else  # quick, and cpu: quick's grid with the sizes below
    if [ -d "$data_dir/cifar-10-batches-py" ]; then
        dataset=cifar10
        echo "$profile profile: CIFAR-10 from $data_dir/cifar-10-batches-py"
    else
        dataset=synthetic
        echo "quick profile: no CIFAR-10 at $data_dir/cifar-10-batches-py, using the synthetic dataset"
    fi
    # 50 training images per class, 1% held out for validation, 50 test images per class: a 32 px ResNet
    # trains at about 50 images/s on 2 CPU cores, so images, not model size, set the quick profile's time.
    common=(--epochs 3 --data-dir "$data_dir" --max-per-class 50 --val-fraction 0.01 --test-per-class 50)
    fractions="0.05 0.1 0.2 0.5"
    locality_fractions="0.1"
    radii="1 2"
    dilations="2"
    # shellcheck disable=SC2054  # the commas are in values (--grids 8,16,32), not between elements
    bench=(--depth 1 --dim 64 --heads 4 --batch-size 1 --grids 8,16,32 --scopes layer --warmup 1 --repeats 3)
    # shellcheck disable=SC2054  # the commas are in values, not between elements
    bench_train=(--models vit-shallow1,resnet18-shallow --compile off --batch-size 32 --steps 3 --warmup 1)
    corruptions="gaussian_noise,defocus_blur"
    budget=20
    finetune=(--epochs 3)
    imagenet_size=64  # a 224 px ViT-B/16 step takes seconds on 2 cores
    truncate_vit="1" truncate_resnet="1"
    # Four presets on two cells (16 runs, 8 of them on sparse 10%): the corners (none, strong2, DeiT's) and one between,
    # so every recipe code path runs without all eight presets at every fraction.
    recipes="none light2 strong2 deit"
    recipe_fractions="0.1"  # plus the standard regime (100%)
    # The binary ladder on sparse 10% alone (20 runs, its teacher data efficiency's): a quick binary run takes 10-80 s
    # here on 2 shared cores, most of it outside training, and a corrupted one 80 s (measured 2026-12-07, load 2-3).
    binary_regimes="sparse"
    binary_vit="--depth 4 --dim 64 --heads 8"  # quick's ViT, deep and with heads enough for --pyramid (4 and 8)
    # Tiny models; vit-11m keeps its role, a ViT with the quick ResNet-18's parameter count (618k vs 677k).
    declare -A size=([vit]="--depth 2 --dim 64 --heads 4" [vit-shallow]="--depth 1 --dim 64 --heads 4"
                     [vit-11m]="--depth 2 --dim 192 --heads 4 --mlp-ratio 2" [resnet18]="--stages 2"
                     [resnet18-shallow]="--stages 1")
fi
if [ "$profile" = cpu ]; then
    # Data efficiency on real CIFAR-10 in about 40 minutes of 2 idle cores: pools of 25, 50 and 100 images per class
    # (sparse 25% and 50% of a 100-image pool, and the pool itself), 25 epochs, 3 seeds, batch 32 (a 250-image set
    # still gets 7 steps an epoch), 200 validation and 1,000 test images. Measured with one thread per run
    # (OMP_NUM_THREADS=1, 2026-12-07: other jobs shared the 2 cores, and one thread gave steady numbers):
    # ResNet-18 --stages 2 trains 17.5 ms/image, evaluates 6.6 ms/image and spends 17 s outside its epochs (start,
    # test set, speed); the ViT (depth 4, width 128) 3.5 ms, 1.1 ms and 7.7 s. An epoch trains 224 + 480 + 992
    # images (whole batches) and validates 3 x 200, so per seed:
    #   ResNet 3 x 17 s + 25 x (1,696 x 17.5 ms + 600 x 6.6 ms) = 892 s
    #   ViT    3 x 7.7 s + 25 x (1,696 x 3.5 ms + 600 x 1.1 ms) = 188 s
    # and 3 seeds 3,240 s on one thread. Two threads run 1.7-2.1x faster (2.1: a full ResNet-18 trains about
    # 70 images/s on 2 cores, 33 on one), so 26-32 minutes on idle cores; two of these commands timed on one
    # thread beside other jobs (load 4-5) took 17% (ViT) and 28% (ResNet, 10 epochs) longer. At 20 images per
    # class and 20 epochs the ResNet reached 31.0 and 35.3% (seeds 0, 1), the ViT 26.7, 26.2 and 22.5% (seeds
    # 0-2): 8 points apart, beyond the two stds added (3.0 + 2.3); at 25 per class (seed 0) the ViT reached 28.0%
    # in its 25 epochs, the ResNet 32.0% in 10. The whole profile, run on 2 idle cores (2026-12-07), took 41 minutes,
    # not the 26-32 predicted: two threads ran the ResNet only about 1.5x faster than one. Its report: ResNet 35.1 +-
    # 0.6, 41.2 +- 0.6, 50.1 +- 0.7% at 25, 50, 100 images per class, the ViT 26.3 +- 1.7, 32.3 +- 3.2, 35.1 +- 1.3%.
    common=(--epochs 25 --data-dir "$data_dir" --max-per-class 100 --val-fraction 0.004 --test-per-class 100
            --batch-size 32)
    fractions="0.25 0.5"
    budget=120  # matched-time, when asked for: about half the standard ResNet's 25 epochs
    # The ResNet stays quick's (677k parameters, and vit-11m a ViT of about as many); the ViT is wider and deeper.
    size[vit]="--depth 4 --dim 128 --heads 4" size[vit-shallow]="--depth 2 --dim 128 --heads 4"
    binary_vit="--depth 4 --dim 128 --heads 8"  # cpu's ViT with the 8 heads --pyramid needs
fi
time_budget=${time_budget:-$budget}
have_cifar100=0
[ -d "$data_dir/cifar-100-python" ] && have_cifar100=1
[ "$profile" = full ] && have_cifar100=1  # the full profile downloads what is missing

# Jobs side by side would each download a missing CIFAR archive into the same folder at once: fetch it first.
if [ "$jobs" -gt 1 ] && [ "$dry_run" = 0 ] && [ "$profile" = full ]; then
    for pair in cifar10:cifar-10-batches-py cifar100:cifar-100-python; do
        [ "${pair%%:*}" = cifar100 ] && ! { wants regimes || wants attention || wants transfer; } && continue
        [ -d "$data_dir/${pair#*:}" ] && continue
        echo "run_all.sh: downloading ${pair%%:*} into $data_dir once, before the jobs start side by side"
        "$python" -c "import sys, data; data.load_cifar(sys.argv[1], sys.argv[2])" "${pair%%:*}" "$data_dir" ||
            die "could not download ${pair%%:*} into $data_dir (see above)"
    done
fi

launcher=("$python")
[ "$gpus" -gt 0 ] && launcher=(torchrun --standalone --nproc_per_node="$gpus")

# ---------------------------------------------------------------- running jobs: in turn, or --jobs side by side
finished=0 done_before=0 failed=()
declare -A pid_name=() pid_log=() pid_slot=() pid_start=()  # the jobs running in the background, by process id
launch() {  # launch NAME LOG ALONE CMD...: run CMD, the job of run NAME (a folder or file); ALONE=1: none beside it
    local name=$1 log=$2 alone=$3; shift 3
    local gpu=()
    [ -n "$devices" ] && gpu=(env "CUDA_VISIBLE_DEVICES=${device_list[0]}")
    if [ "$jobs" = 1 ]; then  # as before --jobs: in the foreground, its output on the terminal
        echo ">>> $*"
        if "${gpu[@]}" "$@"; then finished=$((finished + 1)); else failed+=("$name"); fi
        return
    fi
    wait_for_sources "$@"
    [ "$alone" = 1 ] && reap_all
    while [ ${#pid_name[@]} -ge "$jobs" ]; do reap; done
    local slot=0
    while [[ " ${pid_slot[*]} " == *" $slot "* ]]; do slot=$((slot + 1)); done
    [ -n "$devices" ] && gpu=(env "CUDA_VISIBLE_DEVICES=${device_list[slot % ${#device_list[@]}]}")
    mkdir -p "$(dirname "$log")"
    echo ">>> ${gpu[*]}${gpu:+ }$*" >> "$log"  # appended: a resumed run's log keeps its earlier attempts
    "${gpu[@]}" "$@" >> "$log" 2>&1 &
    pid_name[$!]=$name pid_log[$!]=$log pid_slot[$!]=$slot pid_start[$!]=$SECONDS
    echo "[start] $name, slot $slot${gpu:+ (${gpu[1]})}: $* (output: $log)"
    [ "$alone" = 1 ] && reap_all
}
reap() {  # reap [PID]: wait for that job (default: the next to end), count it and print its end line
    local pid=${1:-} status
    if [ -n "$pid" ]; then wait "$pid"; else wait -n -p pid "${!pid_name[@]}"; fi
    status=$?
    local name=${pid_name[$pid]} log=${pid_log[$pid]} took=$((SECONDS - pid_start[$pid]))
    unset "pid_name[$pid]" "pid_log[$pid]" "pid_slot[$pid]" "pid_start[$pid]"
    if [ "$status" = 0 ]; then
        finished=$((finished + 1))
        echo "[end] $name: exit 0 after ${took}s"
    else
        failed+=("$name")
        echo "[end] $name: exit $status after ${took}s, see $log"
    fi
}
reap_all() { while [ ${#pid_name[@]} -gt 0 ]; do reap; done; }
wait_for_sources() {  # wait_for_sources CMD...: wait for the runs of this sweep that CMD starts from or learns from
    # Dependencies: a fine-tune (--init), a truncation or attention swap (--init) and a student (--teacher) name
    # their source's run folder. The grid lists every source before the runs that need it, so a source is
    # finished, failed, or still running here; waiting for that one job, not a barrier before each phase, keeps
    # the other slots busy.
    local word pid
    for word in "$@"; do
        [[ "$word" == "$runs/"* ]] || continue
        for pid in "${!pid_name[@]}"; do
            [ "${pid_name[$pid]}" = "$word" ] && reap "$pid"
        done
    done
}
stop() {  # stop STATUS: on Ctrl-C or kill, end the jobs this script started, so none goes on writing its folder
    [ ${#pid_name[@]} -gt 0 ] && kill "${!pid_name[@]}" 2>/dev/null
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
declare -A seen  # a cell shared by several experiments (the standard runs) is run and printed once
job() {  # job NAME ARCH [train.py flags...]: one run per seed, in RUNS/NAME-s<seed> (@SEED@ in a flag: the seed)
    local name=$1 arch=$2; shift 2
    local seed
    for seed in ${seeds//,/ }; do
        local out="$runs/$name-s$seed"
        [ -n "${seen[$out]:-}" ] && continue
        seen[$out]=1
        local run_with=("${launcher[@]}") alone=0  # a time budget is wall-clock: shared with other jobs, it is not
        [[ " $* " == *" --time-budget "* ]] && run_with=("$python") alone=1
        # shellcheck disable=SC2206  # the size flags are meant to split into words
        local cmd=("${run_with[@]}" train.py --arch "$arch" ${size[$arch]:-} "${common[@]}" "${@//@SEED@/$seed}"
                   --seed "$seed" --out "$out")
        if grep -qs '"status": "failed"' "$out/final.json"; then  # a nan loss: listed, not rerun (--overwrite does)
            failed+=("$out (failed before: see its final.json)")
            [ "$dry_run" = 1 ] && echo "# failed: ${cmd[*]}"
            continue
        fi
        if [ -f "$out/final.json" ]; then
            done_before=$((done_before + 1))
            [ "$dry_run" = 1 ] && echo "# done: ${cmd[*]}"
            continue
        fi
        [ -f "$out/checkpoint.pt" ] && cmd+=(--resume)
        if [ "$dry_run" = 1 ]; then
            echo "${cmd[*]}"
            continue
        fi
        launch "$out" "$out/train.log" "$alone" "${cmd[@]}"
    done
}
both() {  # both NAME_SUFFIX [flags...]: the ViT and ResNet-18 of one cell, on identical data
    local suffix=$1; shift
    job "vit-$suffix" vit "$@"
    job "resnet18-$suffix" resnet18 "$@"
}
data_flags=(--dataset "$dataset")

# ---------------------------------------------------------------- the grid
if wants regimes; then  # 1. regimes
    both "standard-$dataset" "${data_flags[@]}"
    if [ "$have_cifar100" = 1 ]; then
        both "many-classes-cifar100" --regime many-classes
    else
        echo "regimes: many-classes skipped, no CIFAR-100 at $data_dir/cifar-100-python"
    fi
    both "imbalanced-r10-$dataset" "${data_flags[@]}" --regime imbalanced --imbalance-ratio 10
    both "imbalanced-r100-$dataset" "${data_flags[@]}" --regime imbalanced --imbalance-ratio 100
    both "corrupted-$dataset" "${data_flags[@]}" --regime corrupted ${corruptions:+--corruptions "$corruptions"}
fi
if wants data-efficiency; then  # 2. data efficiency; the 100% point is the standard run
    both "standard-$dataset" "${data_flags[@]}"
    for f in $fractions; do both "sparse-f$f-$dataset" "${data_flags[@]}" --regime sparse --fraction "$f"; done
fi
if wants shallow; then  # 3. shallow networks, beside their full-depth siblings
    for cell in "standard-$dataset" "sparse-f0.1-$dataset"; do
        flags=("${data_flags[@]}")
        [[ "$cell" == sparse* ]] && flags+=(--regime sparse --fraction 0.1)
        both "$cell" "${flags[@]}"
        job "vit-shallow-$cell" vit-shallow "${flags[@]}"
        job "resnet18-shallow-$cell" resnet18-shallow "${flags[@]}"
    done
fi
if wants locality; then  # 4. attention locality: local radii and dilations beside full attention, across data fractions
    for f in 1 $locality_fractions; do
        cell="standard-$dataset" flags=("${data_flags[@]}")
        [ "$f" != 1 ] && cell="sparse-f$f-$dataset" && flags+=(--regime sparse --fraction "$f")
        both "$cell" "${flags[@]}"
        for r in $radii; do job "vit-local$r-$cell" vit "${flags[@]}" --attention local --radius "$r"; done
        for d in $dilations; do
            job "vit-dilated1d$d-$cell" vit "${flags[@]}" --attention dilated --radius 1 --dilation "$d"
        done
    done
fi
if wants attention; then  # 5. every attention variant and SL-ViT beside full attention and ResNet-18
    # Linformer and Nystromformer keep a quarter of the 64 patch tokens (k = 16, 16 landmarks): at k = 64
    # Linformer would not compress a 32 px image at all.
    variants=("local1:--attention local --radius 1" "dilated1d2:--attention dilated --radius 1 --dilation 2"
              "hybrid1d1-2-4:--attention hybrid --radius 1 --dilations 1,2,4"
              "linformer16:--attention linformer --linformer-k 16"
              "performer:--attention performer" "nystrom16:--attention nystrom --landmarks 16" "lsa:--attention lsa"
              "lsa-spt:--attention lsa --spt")
    cells=("standard-$dataset" "sparse-f0.1-$dataset")
    if [ "$have_cifar100" = 1 ]; then
        cells+=("many-classes-cifar100")
    else
        echo "attention: CIFAR-100 cells skipped, no CIFAR-100 at $data_dir/cifar-100-python"
    fi
    for cell in "${cells[@]}"; do
        case "$cell" in
            standard*) flags=("${data_flags[@]}") ;;
            sparse*) flags=("${data_flags[@]}" --regime sparse --fraction 0.1) ;;
            many*) flags=(--regime many-classes) ;;
        esac
        both "$cell" "${flags[@]}"
        for v in "${variants[@]}"; do
            # shellcheck disable=SC2206  # the variant's flags are meant to split into words
            vflags=(${v#*:})
            job "vit-${v%%:*}-$cell" vit "${flags[@]}" "${vflags[@]}"
        done
    done
fi
bench_job() {  # bench_job NAME [flags...]: evaluate.py NAME into RUNS/bench/NAME.json, once; alone: it measures time
    local name=$1; shift
    local out="$runs/bench/$name.json"
    local cmd=("$python" evaluate.py "$name" "$@" --out "$out")
    if [ -f "$out" ]; then
        done_before=$((done_before + 1)); [ "$dry_run" = 1 ] && echo "# done: ${cmd[*]}"
    elif [ "$dry_run" = 1 ]; then
        echo "${cmd[*]}"
    else
        mkdir -p "$runs/bench"
        launch "$out" "$runs/bench/$name.log" 1 "${cmd[@]}"
    fi
}
if wants attention-cost; then  # 6. cost of every attention variant against token count (one process, no training)
    bench_job bench-attention "${bench[@]}"
fi
if wants matched-params; then  # 7a. equal parameter counts
    both "standard-$dataset" "${data_flags[@]}"
    job "vit-11m-standard-$dataset" vit-11m "${data_flags[@]}"
fi
if wants matched-time; then  # 7b. equal wall-clock training time, not equal epochs
    # --epochs is only a cap here; the warm-up is 5% of the budget (warm-up epochs / epochs).
    both "t${time_budget}s-standard-$dataset" "${data_flags[@]}" --time-budget "$time_budget" \
        --epochs 1000 --warmup-epochs 50
fi
# 8. convergence (epochs and seconds to each accuracy threshold) is in every run's final.json.

# ---------------------------------------------------------------- transfer (9-11)
# The offline transfer experiment: pretrain on CIFAR-10 classes 0-4 (all their images), fine-tune on classes 5-9.
# The same seed pairs a fine-tuned run with its own pretraining (@SEED@).
pretrain=(--dataset "$dataset" --classes 0-4)
target=(--dataset "$dataset" --classes 5-9)
own() { echo "--init $runs/$1-standard-$dataset-c0-4-s@SEED@"; }  # own ARCH: the flag starting from its pretraining
imagenet_files() {  # imagenet_files NAME...: the torch hub cache file of each torchvision model's ImageNet weights
    # One interpreter for all of them: importing torch and torchvision takes seconds.
    "$python" -c "import os, sys, torch, torchvision
for name in sys.argv[1:]:
    w = torchvision.models.get_model_weights(name)['IMAGENET1K_V1']
    print(os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(w.url)))" "$@"
}
declare -A imagenet=()  # arch -> flags for its ImageNet weights, when the file is in the cache
if wants transfer || wants truncation; then
    hub=$(imagenet_files resnet18 vit_b_16 2>/dev/null) ||
        die "$python cannot import torch and torchvision; run $python -c 'import torchvision' to see why"
    mapfile -t files <<< "$hub"
    archs=(resnet18 vit-b16)
    for i in "${!archs[@]}"; do
        file=${files[$i]}
        if [ -f "$file" ]; then
            imagenet[${archs[$i]}]="--pretrained imagenet --img-size $imagenet_size"
        else
            echo "transfer: ImageNet ${archs[$i]} runs skipped, no weights file $file"
        fi
    done
fi
if wants transfer || wants truncation; then
    both "standard-$dataset-c0-4" "${pretrain[@]}"
elif wants attention-swap; then
    job "vit-standard-$dataset-c0-4" vit "${pretrain[@]}"
fi
if wants transfer; then  # 9. scratch vs own pretraining vs ImageNet, at every data fraction and long-tailed
    cells=("standard:" "imbalanced-r100-exp:--regime imbalanced --imbalance-ratio 100")
    for f in $fractions; do cells+=("sparse-f$f:--regime sparse --fraction $f"); done
    if [ "$have_cifar100" = 1 ]; then
        both "many-classes-cifar100" --regime many-classes  # the CIFAR-100 pretraining, also a regimes run
    fi
    for c in "${cells[@]}"; do
        # shellcheck disable=SC2206  # the cell's flags are meant to split into words
        cflags=(${c#*:}) cell="${c%%:*}-$dataset-c5-9"
        both "$cell" "${target[@]}" "${cflags[@]}"
        for arch in vit resnet18; do
            # shellcheck disable=SC2046  # own's flags are meant to split into words
            job "$arch-from-c0-4-$cell" "$arch" "${target[@]}" "${cflags[@]}" $(own "$arch") "${finetune[@]}"
            [ "$have_cifar100" = 1 ] && job "$arch-from-cifar100-$cell" "$arch" "${target[@]}" "${cflags[@]}" \
                --init "$runs/$arch-many-classes-cifar100-s@SEED@" "${finetune[@]}"
        done
        for arch in "${!imagenet[@]}"; do
            # shellcheck disable=SC2086  # the ImageNet flags are meant to split into words
            job "$arch-in1k-$cell" "$arch" "${target[@]}" "${cflags[@]}" ${imagenet[$arch]} "${finetune[@]}"
        done
    done
fi
if wants truncation; then  # 10. later layers removed before fine-tuning: a probe and a full fine-tune per K
    cell="sparse-f0.1-$dataset-c5-9" cflags=(--regime sparse --fraction 0.1)
    truncated() {  # truncated ARCH START_NAME "START_FLAGS" "KS": every K, and all layers (K = the depth)
        local arch=$1 start=$2 sflags=$3 ks=$4 mode k
        for mode in finetune probe; do
            local probe=() tag=""
            [ "$mode" = probe ] && probe=(--freeze backbone) tag=-probe
            # shellcheck disable=SC2086  # the start flags are meant to split into words
            job "$arch-$start$tag-$cell" "$arch" "${target[@]}" "${cflags[@]}" $sflags "${probe[@]}" "${finetune[@]}"
            for k in $ks; do
                # shellcheck disable=SC2086
                job "$arch-$start-k$k$tag-$cell" "$arch" "${target[@]}" "${cflags[@]}" $sflags --truncate "$k" \
                    "${probe[@]}" "${finetune[@]}"
            done
        done
    }
    truncated vit from-c0-4 "$(own vit)" "$truncate_vit"
    truncated resnet18 from-c0-4 "$(own resnet18)" "$truncate_resnet"
    [ -n "${imagenet[resnet18]:-}" ] && truncated resnet18 in1k "${imagenet[resnet18]}" "1 2 3"
    [ -n "${imagenet[vit-b16]:-}" ] && truncated vit-b16 in1k "${imagenet[vit-b16]}" "2 4 6 8 10"
fi
if wants attention-swap; then  # 11. each attention variant swapped into the pretrained ViT, then fine-tuned
    at10=(--regime sparse --fraction 0.1)  # not `cell`: that is a string everywhere else
    swaps=("local1:--attention local --radius 1" "dilated1d2:--attention dilated --radius 1 --dilation 2"
           "hybrid1d1-2-4:--attention hybrid --radius 1 --dilations 1,2,4"
           "linformer16:--attention linformer --linformer-k 16" "performer:--attention performer"
           "nystrom16:--attention nystrom --landmarks 16" "lsa:--attention lsa")
    # shellcheck disable=SC2046  # own's flags are meant to split into words
    job "vit-from-c0-4-sparse-f0.1-$dataset-c5-9" vit "${target[@]}" "${at10[@]}" $(own vit) "${finetune[@]}"
    for v in "${swaps[@]}"; do
        # shellcheck disable=SC2206  # the variant's flags are meant to split into words
        vflags=(${v#*:})
        # shellcheck disable=SC2046
        job "vit-from-c0-4-swap-${v%%:*}-sparse-f0.1-$dataset-c5-9" vit "${target[@]}" "${at10[@]}" $(own vit) \
            "${vflags[@]}" "${finetune[@]}"
    done
fi

# ---------------------------------------------------------------- training recipes (12-13)
if wants distillation; then  # 12. DeiT distillation: the ResNet-18 of the same cell and seed taught to the ViT
    # The teacher is the grid's ResNet-18 run of the student's own cell and seed (@SEED@), so it never saw more data
    # than the student; the grid's plain ViT of the cell is the student without a teacher (both run once, first).
    # The students keep the lab's default recipe, so that plain ViT is their exact baseline.
    cells=("standard-$dataset:" "sparse-f0.1-$dataset:--regime sparse --fraction 0.1"
           "imbalanced-r100-$dataset:--regime imbalanced --imbalance-ratio 100")
    for c in "${cells[@]}"; do
        # shellcheck disable=SC2206  # the cell's flags are meant to split into words
        cflags=(${c#*:}) cell=${c%%:*}
        both "$cell" "${data_flags[@]}" "${cflags[@]}"
        for d in soft hard token; do
            job "vit-kd$d-$cell" vit "${data_flags[@]}" "${cflags[@]}" --teacher "$runs/resnet18-$cell-s@SEED@" \
                --distill "$d"
        done
    done
fi
if wants recipes; then  # 13. AugReg's augmentation and regularisation levels and DeiT's recipe, across data fractions
    # The default-recipe runs of these cells (data-efficiency's) are the lab's own baseline.
    for f in $recipe_fractions 1; do
        cell="standard-$dataset" flags=("${data_flags[@]}")
        [ "$f" != 1 ] && cell="sparse-f$f-$dataset" && flags+=(--regime sparse --fraction "$f")
        both "$cell" "${flags[@]}"
        for r in $recipes; do both "$r-$cell" "${flags[@]}" --recipe "$r"; done
    done
fi

if wants train-speed; then  # 14. the training step's images/s, split and MFU per model (one process, no run folder)
    bench_job bench-train "${bench_train[@]}"
fi

# ---------------------------------------------------------------- binary networks (15)
if wants binary; then  # 15. one-bit ViTs up BinaryViT's ladder and ResNet-18, each beside its full-precision twin
    # Each rung adds one of BinaryViT's changes (Le & Li 2023) to the rung before. Binary and full-precision runs alike
    # train with the binary recipe (--recipe binary), so a rung and its twin differ in --binary alone; --fp-merge needs
    # --binary, so its twin is the pyramid's. The teacher is the grid's full-precision ResNet-18 of the same cell and
    # seed, trained with the lab's default recipe: one teacher for both families keeps their comparison fair
    # (BinaryViT distilled a DeiT-S, ReActNet a ResNet-34), and it never saw more data than its students. --teacher
    # alone suffices: the binary recipe distils soft, at alpha 1 and tau 1.
    steps=("gap:--pool mean" "mp:--multi-pool" "ra:--residual-affine" "pyr:--pyramid" "fpm:--fp-merge")
    # ladder PREFIX SUFFIX TOP [flags...]: ViT and ResNet-18 (both), then the ViT up the first TOP steps, each run
    # named ARCH-PREFIX[-STEP...]SUFFIX-CELL (vit-bin-gap-mp-kd-standard-cifar10)
    ladder() {
        local prefix=$1 suffix=$2 top=$3 tags="" rung=() step; shift 3
        both "$prefix$suffix-$cell" "$@"
        for step in "${steps[@]:0:top}"; do
            # shellcheck disable=SC2206  # the step's flags are meant to split into words
            tags+="-${step%%:*}" rung+=(${step#*:})
            job "vit-$prefix$tags$suffix-$cell" vit "$@" "${rung[@]}"
        done
    }
    cells=("standard-$dataset:" "sparse-f0.1-$dataset:--regime sparse --fraction 0.1"
           "imbalanced-r100-$dataset:--regime imbalanced --imbalance-ratio 100"
           "corrupted-$dataset:--regime corrupted${corruptions:+ --corruptions $corruptions}")
    for c in "${cells[@]}"; do
        [[ " $binary_regimes " == *" ${c%%-*} "* ]] || continue
        # shellcheck disable=SC2206  # the cell's flags are meant to split into words
        cflags=(${c#*:}) cell=${c%%:*}
        job "resnet18-$cell" resnet18 "${data_flags[@]}" "${cflags[@]}"  # the teacher, before its students
        grid_vit=${size[vit]:-} size[vit]=$binary_vit  # the ladder's ViT size, for its twins and students too
        ladder fp "" 4 "${data_flags[@]}" "${cflags[@]}" --recipe binary
        ladder bin "" 5 "${data_flags[@]}" "${cflags[@]}" --recipe binary --binary
        ladder bin -kd 5 "${data_flags[@]}" "${cflags[@]}" --recipe binary --binary \
            --teacher "$runs/resnet18-$cell-s@SEED@"
        size[vit]=$grid_vit  # the other experiments' ViT again
    done
fi

# ---------------------------------------------------------------- summary
[ "$dry_run" = 1 ] && exit 0
reap_all
echo "run_all.sh: $finished runs finished now, $done_before were already done, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    printf '  failed: %s\n' "${failed[@]}"
    echo "  re-run the same command to retry them (finished runs are skipped; keep the same --gpus: a run resumes"
    echo "  only with the number of processes it started with)"
    exit 1
fi
echo "next: $python analyze.py $runs"
