using System.Globalization;
using System.Text;

namespace Fiddler.Actors.Scheduling;

// The router's feedback side: observed times against predictions, and the slowdown factors it learns from them.
public sealed partial class ExpertRouter
{
    private readonly PredictionStats[] _stats = new PredictionStats[Enum.GetValues<ExpertPlacement>().Length];
    private PredictionStats _layer;
    private PredictionStats _cpuLane;
    private PredictionStats _deviceLane;
    // Per regime (decode-sized, then batch sizes; see RegimeMaxTokens): CPU lane slowdown vs calibration, learned online
    // (see RouterOptions.AdaptCpuModel), without / with transfers; and the weight copies' slowdown vs calibration (the
    // copy engine reads the same DRAM the CPU lane does), learned from the device lane's own timings where the engine
    // measures them (gated layers on CUDA); and how many layers taught each regime.
    private readonly double[] _calmFactor = Ones(), _contendedFactor = new double[RegimeMaxTokens.Length], _transferFactor = Ones();
    private readonly long[] _samples = new long[RegimeMaxTokens.Length];

    private static double[] Ones() => [.. Enumerable.Repeat(1.0, RegimeMaxTokens.Length)];
    // RouterOptions.BalanceLastLane: a multiplier on the planned CPU lane of decode-sized layers with both lanes (1: off
    // or not yet learned), and how often the CPU lane ended last since the last reset.
    private double _balance = 1;
    private long _laneOrders, _cpuEndedLast;

    /// <summary>
    /// The share of a layer's ends the CPU lane should have last, for the least expected finish: moving a few bytes from
    /// the device lane to the CPU lane shortens the layers the device ends (by their copy time) and lengthens those the
    /// CPU ends (by their CPU time), so the best share is where P(CPU last) × CPU ms per byte = P(device last) × copy ms
    /// per byte: <c>copy / (cpu + copy)</c>, per expert. Bounded to 0.2..0.8.
    /// </summary>
    public static double LastLaneTarget(double cpuMsPerExpert, double transferMsPerExpert) =>
        cpuMsPerExpert > 0 && transferMsPerExpert > 0 ? Math.Clamp(transferMsPerExpert / (cpuMsPerExpert + transferMsPerExpert), 0.2, 0.8) : 0.5;

    /// <summary>
    /// Records observed per-expert times (same quantity as <see cref="ExpertDecision.PredictedMs"/>; may be empty) and,
    /// when given, the observed layer time against <see cref="LayerPlan.MakespanMs"/> and the observed CPU lane against
    /// <see cref="LayerPlan.CpuLaneMs"/>. Thread-safe.
    /// </summary>
    /// <param name="observedDeviceLaneMs">The device lane's time (copies, streamed and resident experts) against
    /// <see cref="LayerPlan.GpuLaneMs"/>; teaches the layer's regime its transfer factor, from layers with transfers and
    /// CPU work (the factor is the copies' slowdown beside the CPU lane; copies alone are planned at calibrated speed).</param>
    /// <param name="cpuEndedLast">Which lane of the layer ended last (true: the CPU's; the device waited for it), where the
    /// engine measured it (gated layers on CUDA); with <see cref="RouterOptions.BalanceLastLane"/> it moves the balance.</param>
    public void Account(LayerPlan plan, IReadOnlyList<ExpertTiming> observed, double? observedLayerMs = null,
        double? observedCpuLaneMs = null, double? observedDeviceLaneMs = null, bool? cpuEndedLast = null)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(observed);
        // The layer's regime (decode-sized or a batch size), worked out once: it picks the factors that learn from this layer.
        int regime = RegimeOfTokens(plan.Decisions.Select(d => d.Tokens));
        double rate = regime > DecodeRegime ? Options.BatchAdaptRate : Options.AdaptRate;
        lock (_gate)
        {
            bool taught = false;
            // Before a regime's first lesson: a batch size starts from the factors its plans borrowed (see LearnedRegime).
            void Seed()
            {
                if (taught || _samples[regime] > 0 || LearnedRegime(regime) is var from && from == regime) return;
                _calmFactor[regime] = _calmFactor[from];
                _contendedFactor[regime] = _contendedFactor[from];
                _transferFactor[regime] = _transferFactor[from];
            }
            foreach (var t in observed)
            {
                int i = IndexOf(plan, t.Expert);
                if (i < 0) throw new ArgumentException($"expert {t.Expert} is not in this layer's plan");
                var d = plan.Decisions[i];
                _stats[(int)d.Placement] = _stats[(int)d.Placement].Add(d.PredictedMs, t.ObservedMs);
            }
            if (observedLayerMs is { } ms) _layer = _layer.Add(plan.MakespanMs, ms);
            if (observedCpuLaneMs is { } cpu && plan.HasCpuWork && plan.CpuLaneMs > 0)
            {
                _cpuLane = _cpuLane.Add(plan.CpuLaneMs, cpu);
                if (Options.AdaptCpuModel && double.IsFinite(cpu) && cpu > 0)
                {
                    // Wide bounds: a calibration disturbed by other load on the host (seen: 5× too slow) must be correctable.
                    double ratio = Math.Clamp(cpu / (plan.CpuLaneMs / plan.CpuFactor), 0.1, 5);
                    Seed();
                    ref double factor = ref plan.HasTransfers ? ref _contendedFactor[regime] : ref _calmFactor[regime];
                    factor += rate * (Robust(ratio, factor) - factor);
                    taught = true;
                }
            }
            if (observedDeviceLaneMs is { } seen && plan.HasTransfers && double.IsFinite(seen) && regime == DecodeRegime)
                _deviceLane = _deviceLane.Add(plan.GpuLaneMs, seen);
            if (observedDeviceLaneMs is { } dev && Options.AdaptCpuModel && plan.HasTransfers && plan.HasCpuWork && plan.GpuLaneMs > 0
                && double.IsFinite(dev) && dev > 0)
            {
                // The lane is mostly copies, so its time scales about with the factor: aim where it would have matched.
                double target = Math.Clamp(plan.TransferFactor * dev / plan.GpuLaneMs, 0.2, 5);
                Seed();
                ref double factor = ref _transferFactor[regime];
                factor += rate * (Robust(target, factor) - factor);
                taught = true;
            }
            if (taught) _samples[regime]++; // one layer, whichever of its factors it taught
            if (cpuEndedLast is bool cpuLast && plan.HasTransfers && plan.HasCpuWork && regime == DecodeRegime)
            {
                _laneOrders++;
                if (cpuLast) _cpuEndedLast++;
                if (_balanceOn && Options.AdaptCpuModel)
                {
                    // A stochastic quantile step: up by (1 − q)·rate when the CPU ended last, down by q·rate otherwise, so
                    // it settles where the CPU ends last in a share q of the layers.
                    // q from the learned (unbalanced) speeds of one expert on each lane.
                    double q = LastLaneTarget(Profile.CpuMs(1) * _contendedFactor[DecodeRegime], Profile.TransferMs * _transferFactor[DecodeRegime]);
                    _balance = Math.Clamp(_balance * (cpuLast ? 1 + Options.BalanceRate * (1 - q) : 1 - Options.BalanceRate * q), 0.5, 2);
                }
            }
        }
    }

    /// <summary>What the router has learned of the lanes' speeds: per regime (decode-sized, then each batch size of
    /// <see cref="BatchSizes"/>) the CPU factors without and with transfers, the copies' factor and the layers that taught
    /// it, and the lane-order balance.</summary>
    public sealed record LearnedSpeeds(double[] Calm, double[] Contended, double[] Transfer, long[] Samples, double Balance);

    /// <summary>A copy of what the router has learned (<see cref="LearnedSpeeds"/>), to put back with
    /// <see cref="RestoreLearned"/>: a comparison of two engine settings in one process keeps each setting's own.</summary>
    public LearnedSpeeds SaveLearned()
    {
        lock (_gate) return new LearnedSpeeds((double[])_calmFactor.Clone(), (double[])_contendedFactor.Clone(), (double[])_transferFactor.Clone(), (long[])_samples.Clone(), _balance);
    }

    /// <summary>Replaces what the router has learned with <paramref name="saved"/> (from <see cref="SaveLearned"/>).</summary>
    public void RestoreLearned(LearnedSpeeds saved)
    {
        ArgumentNullException.ThrowIfNull(saved);
        if (saved.Calm.Length != _calmFactor.Length || saved.Contended.Length != _contendedFactor.Length || saved.Transfer.Length != _transferFactor.Length
            || saved.Samples.Length != _samples.Length)
            throw new ArgumentException("the saved speeds are not of this router's shape", nameof(saved));
        lock (_gate)
        {
            saved.Calm.CopyTo(_calmFactor, 0);
            saved.Contended.CopyTo(_contendedFactor, 0);
            saved.Transfer.CopyTo(_transferFactor, 0);
            saved.Samples.CopyTo(_samples, 0);
            _balance = saved.Balance;
        }
    }

    /// <summary>The learned balance multiplier on the planned CPU lane of decode-sized layers (1 until learned; applied only
    /// while <see cref="BalanceLastLane"/>).</summary>
    public double LaneBalance { get { lock (_gate) return _balance; } }

    /// <summary>Decode-sized layers with both lanes whose ending order was observed since the last reset, and the share the
    /// CPU lane ended last.</summary>
    public (long Layers, double CpuLastShare) LaneOrder
    {
        get { lock (_gate) return (_laneOrders, _laneOrders == 0 ? 0 : (double)_cpuEndedLast / _laneOrders); }
    }

    /// <summary>
    /// One sample's pull on a learned factor, limited to ×1.5 either way of where it is: a single stalled layer (a GC
    /// pause, another process) must not swing the plan; a real change still gets there within a few dozen layers.
    /// </summary>
    private static double Robust(double target, double current) => Math.Clamp(target, current / 1.5, current * 1.5);

    /// <summary>Forgets the predicted-vs-observed statistics (not the learned factors): a new measurement window.</summary>
    public void ResetStats()
    {
        lock (_gate)
        {
            Array.Clear(_stats);
            _layer = _cpuLane = _deviceLane = default;
            _laneOrders = _cpuEndedLast = 0;
        }
    }

    /// <summary>Predicted vs observed so far for one kind of placement.</summary>
    public PredictionStats Stats(ExpertPlacement placement) { lock (_gate) return _stats[(int)placement]; }

    /// <summary>Predicted layer makespan vs observed layer time so far.</summary>
    public PredictionStats LayerStats { get { lock (_gate) return _layer; } }

    /// <summary>The CPU slowdown factors in use for decode-sized layers (calibrated → engine): without and with weight transfers.</summary>
    public (double Calm, double Contended) CpuFactors { get { lock (_gate) return (_calmFactor[0], _contendedFactor[0]); } }

    /// <summary>The weight-copy slowdown factor in use for decode-sized layers (1 until device lanes are observed).</summary>
    public double TransferFactor { get { lock (_gate) return _transferFactor[0]; } }

    /// <summary>One batch size's learned factors (<see cref="BatchFactors"/>).</summary>
    /// <param name="MaxTokens">The size's largest per-expert batch (<see cref="int.MaxValue"/>: the largest size).</param>
    /// <param name="Layers">Layers that taught it (0: it borrows another size's factors, see the router's plans).</param>
    public readonly record struct BatchFactor(int MaxTokens, double Calm, double Contended, double Transfer, long Layers)
    {
        /// <summary>"≤ 16", "> 64": the size as a label.</summary>
        public string Label => MaxTokens == int.MaxValue ? $"> {RegimeMaxTokens[^2]}" : $"≤ {MaxTokens}";
    }

    /// <summary>The largest per-expert batch of each batch size the router learns apart (more than 4 tokens for some
    /// expert, then up to each bound; the last is unbounded).</summary>
    public static IReadOnlyList<int> BatchSizes => RegimeMaxTokens[1..];

    /// <summary>The factors in use for larger batches (prefill, beams), per batch size (<see cref="BatchSizes"/>): CPU
    /// without and with transfers, and copies.</summary>
    public IReadOnlyList<BatchFactor> BatchFactors
    {
        get
        {
            lock (_gate)
                return [.. Enumerable.Range(1, Regimes - 1).Select(r => new BatchFactor(RegimeMaxTokens[r], _calmFactor[r], _contendedFactor[r], _transferFactor[r], _samples[r]))];
        }
    }

    /// <summary>Predicted vs observed CPU lane (layers with at least one CPU expert) so far.</summary>
    public PredictionStats CpuLaneStats { get { lock (_gate) return _cpuLane; } }

    /// <summary>Predicted vs observed device lane (decode-sized layers with transfers, where the engine measured it) so far.</summary>
    public PredictionStats DeviceLaneStats { get { lock (_gate) return _deviceLane; } }

    /// <summary>A table of predicted vs observed means per placement and per layer.</summary>
    public string Report()
    {
        var sb = new StringBuilder("placement      n   predicted ms   observed ms   |error| ms   observed/predicted\n");
        void Row(string name, PredictionStats s) => sb.AppendLine(CultureInfo.InvariantCulture,
            $"{name,-9} {s.Count,6} {s.MeanPredictedMs,14:0.000} {s.MeanObservedMs,13:0.000} {s.MeanAbsErrorMs,12:0.000} {s.ObservedOverPredicted,20:0.000}");
        foreach (var p in Enum.GetValues<ExpertPlacement>()) Row(p.ToString().ToLowerInvariant(), Stats(p));
        Row("cpu lane", CpuLaneStats);
        Row("gpu lane", DeviceLaneStats); // decode-sized layers only
        Row("layer", LayerStats);
        var (calm, contended) = CpuFactors;
        sb.AppendLine(CultureInfo.InvariantCulture, $"CPU factor vs calibration: {calm:0.000} alone, {contended:0.000} beside transfers; transfer factor {TransferFactor:0.000}");
        var (orders, cpuLast) = LaneOrder;
        if (orders > 0)
            sb.AppendLine(CultureInfo.InvariantCulture, $"lane ends: the CPU lane ended last in {100 * cpuLast:0.0} % of {orders} decode layers with both lanes; balance {LaneBalance:0.000}{(_balanceOn ? "" : " (off)")}");
        foreach (var b in BatchFactors)
        {
            string learned = b.Layers == 0 ? "not learned yet"
                : string.Create(CultureInfo.InvariantCulture, $"CPU {b.Calm:0.000} alone, {b.Contended:0.000} beside transfers; transfer {b.Transfer:0.000} ({b.Layers} layers)");
            sb.AppendLine(CultureInfo.InvariantCulture, $"batches of {b.Label} tokens per expert (> {LearnedMaxTokens} for some): {learned}");
        }
        return sb.ToString();
    }

    private static int IndexOf(LayerPlan plan, int expert)
    {
        for (int i = 0; i < plan.Decisions.Count; i++) if (plan.Decisions[i].Expert == expert) return i;
        return -1;
    }
}
