"""The causal world behind the synthetic silos: accounts, their latent health, churn and experiment effects.

Time runs in weeks from START. Weeks [0, OBSERVED) are exported; weeks [OBSERVED, HORIZON) are simulated only
for the ground truth (true future churn and value). Everything a silo shows is drawn from the latent state here,
so the truth is known: the weekly churn hazard, each customer's response to every campaign action, future spend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from c360.core.contract import ACTIONS, PLANS, PRODUCT_FEATURES, REGIONS, SEGMENTS

END = pd.Timestamp("2026-11-02")  # a Monday; data ends the day before
OBSERVED = 104
FUTURE = 52
HORIZON = OBSERVED + FUTURE
START = END - pd.Timedelta(weeks=OBSERVED)
BILLING_PERIOD = 4  # weeks between invoices
WAVES = (13, 26, 39, 52, 65, 78)  # quarterly experiment weeks; labels of the last one end inside the observed window
EFFECT_WEEKS = 13  # horizon of an experiment's outcome (about 90 days)
PRICE = {"basic": 10.0, "pro": 25.0, "business": 45.0, "enterprise": 70.0}
ACTION_COST = {"no_action": 0.0, "discount": 0.0, "training_invite": 5.0, "csm_call": 40.0}
DISCOUNT = 0.2  # share of the invoice waived for the discount action's three invoices
SEGMENT_SHARE = (0.5, 0.35, 0.15)
REGION_SHARE = (0.45, 0.3, 0.15, 0.1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """Per-account traits (arrays of length n) and weekly paths (n × HORIZON)."""

    accounts: pd.DataFrame
    health: np.ndarray  # latent health incl. treatment effects
    hazard: np.ndarray  # weekly churn probability
    alive: np.ndarray  # bool, account subscribed during the week
    churn_week: np.ndarray  # first week not subscribed; HORIZON when never
    seats: np.ndarray  # seats per week
    plan: np.ndarray  # plan index per week
    mrr: np.ndarray  # monthly recurring revenue per week
    invoice_due: np.ndarray  # bool, an invoice is issued this week
    failed: np.ndarray  # bool, the invoice of this week failed its first attempt
    assignments: pd.DataFrame  # account, wave, action
    effects: pd.DataFrame  # account, wave, action, p_churn_90d, revenue_90d, cost
    mean_health: np.ndarray  # the predictable part of health, before experiment effects
    bumps: dict[int, np.ndarray]  # experiment wave -> its effect on health, week by week
    responses: pd.DataFrame  # row, wave, week, amount: the expansion orders actions brought (RESPONSE)


def draw_accounts(rng: np.random.Generator, first: int, n: int) -> pd.DataFrame:
    segment = rng.choice(len(SEGMENTS), n, p=SEGMENT_SHARE)
    consumer, smb, enterprise = (segment == i for i in range(3))
    plan = np.where(
        consumer, rng.choice(2, n, p=(0.6, 0.4)),
        np.where(smb, rng.choice(3, n, p=(0.3, 0.4, 0.3)), 2 + rng.choice(2, n, p=(0.4, 0.6))),
    )
    seats = np.where(
        consumer, 1,
        np.where(smb, 1 + rng.geometric(0.2, n), np.clip(rng.lognormal(3.3, 0.7, n), 10, 400).astype(int)),
    )
    price_sensitivity = sigmoid(-0.5 + 1.5 * consumer + 0.5 * smb - 1.5 * enterprise + rng.normal(0, 0.7, n))
    return pd.DataFrame({
        "account": np.arange(first, first + n),
        "segment": np.asarray(SEGMENTS)[segment],
        "region": np.asarray(REGIONS)[rng.choice(len(REGIONS), n, p=REGION_SHARE)],
        "start_week": rng.integers(-52, OBSERVED - 8, n),
        "plan0": plan,
        "seats0": seats,
        "base_health": rng.normal(0.0, 0.8, n),
        "trend": rng.normal(0.0, 0.5, n),
        "adoption": rng.beta(2.0, 2.5, n),
        "price_sensitivity": price_sensitivity,
        "support_load": rng.lognormal(0.0, 0.5, n),
        "fail_rate": np.clip(rng.beta(1.0, 30.0, n) * (1.0 + consumer), 0, 0.5),
        "churn_draw": rng.exponential(1.0, n),
    })


def action_lift(acc: pd.DataFrame) -> np.ndarray:
    """Bump to latent health of each action (n × len(ACTIONS)); depends on traits the data reveals."""
    enterprise = (acc["segment"] == "enterprise").to_numpy()
    lift = np.zeros((len(acc), len(ACTIONS)))
    lift[:, ACTIONS.index("discount")] = 1.6 * acc["price_sensitivity"] - 0.5
    lift[:, ACTIONS.index("training_invite")] = 1.4 * (1 - acc["adoption"]) - 0.45
    lift[:, ACTIONS.index("csm_call")] = 0.9 * np.tanh(acc["support_load"] - 1) + 0.6 * enterprise - 0.1
    return lift


# A team may answer an action with a one-off expansion order worth a month of its MRR, placed within RESPONSE_WEEKS
# of the wave, when the action fits how it uses the product: a CSM call sells more to teams that use most of it, a
# training invite brings teams on few features to the add-on they lacked. Action -> (top chance, pivot share of
# the features used, direction); one-seat consumers never respond.
RESPONSE = {"training_invite": (0.3, 0.3, -1.0), "csm_call": (0.5, 0.5, 1.0)}
RESPONSE_WEEKS = 4


def breadth(acc: pd.DataFrame) -> np.ndarray:
    """How many of the product's features an account uses: set by its adoption."""
    return 1 + np.round((len(PRODUCT_FEATURES) - 1) * acc["adoption"].to_numpy()).astype(int)


def response_chance(acc: pd.DataFrame) -> np.ndarray:
    """Chance of an expansion order after each action (n × len(ACTIONS))."""
    used = breadth(acc) / len(PRODUCT_FEATURES)
    team = (acc["segment"] != "consumer").to_numpy()
    chance = np.zeros((len(acc), len(ACTIONS)))
    for action, (top, pivot, direction) in RESPONSE.items():
        chance[:, ACTIONS.index(action)] = top * team * sigmoid(8 * direction * (used - pivot))
    return chance


ADDON_SIZE = (4.0, 0.6)  # log-normal mean and sigma of an add-on order, before the seat factor


def addon_rate(health: np.ndarray) -> np.ndarray:
    """Weekly chance of an add-on order: healthy accounts buy more."""
    return 0.008 * np.exp(health)


def addon_scale(seats: np.ndarray) -> np.ndarray:
    """Seat factor of an add-on order's amount."""
    return 1 + np.log(seats)


def addon_mean(seats: np.ndarray) -> np.ndarray:
    return np.exp(ADDON_SIZE[0] + ADDON_SIZE[1] ** 2 / 2) * addon_scale(seats)


NOISE_MEMORY = 0.95  # weekly autocorrelation of the health noise


def _health_mean(acc: pd.DataFrame) -> np.ndarray:
    """The predictable part of health: level, trend with age, and the fragile first weeks."""
    weeks = np.arange(HORIZON)
    age = (weeks[None, :] - acc["start_week"].to_numpy()[:, None]).clip(0) / 52
    onboarding = -0.6 * np.exp(-age * 52 / 6)
    return acc["base_health"].to_numpy()[:, None] + acc["trend"].to_numpy()[:, None] * age + onboarding


def _health_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    noise = np.empty((n, HORIZON))
    noise[:, 0] = rng.normal(0, 0.2, n)
    shocks = rng.normal(0, 0.06, (n, HORIZON))
    for t in range(1, HORIZON):
        noise[:, t] = NOISE_MEMORY * noise[:, t - 1] + shocks[:, t]
    return noise


def _invoices(rng: np.random.Generator, acc: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    weeks = np.arange(HORIZON)
    since = weeks[None, :] - acc["start_week"].to_numpy()[:, None]
    due = (since >= 0) & (since % BILLING_PERIOD == 0)
    failed = due & (rng.random(due.shape) < acc["fail_rate"].to_numpy()[:, None])
    return due, failed


def weekly_hazard(health: np.ndarray, recent_failure: np.ndarray, acc: pd.DataFrame) -> np.ndarray:
    consumer = (acc["segment"] == "consumer").to_numpy()[:, None]
    return sigmoid(-4.9 - 1.1 * health + 1.2 * recent_failure + 0.3 * consumer)


def _recent(flags: np.ndarray, weeks: int) -> np.ndarray:
    """True where a flag was raised within the last `weeks` weeks (inclusive)."""
    c = np.cumsum(flags, axis=1)
    lagged = np.zeros_like(c)
    lagged[:, weeks:] = c[:, :-weeks]
    return (c - lagged) > 0


def _churn_week(hazard: np.ndarray, acc: pd.DataFrame) -> np.ndarray:
    """First week not subscribed. Hazard counts from the window's start: the silos only show accounts that
    were still customers then, and a memoryless draw makes that the right conditional."""
    weeks = np.arange(HORIZON)
    start = acc["start_week"].clip(lower=0).to_numpy()[:, None]
    cum = np.cumsum(np.where(weeks[None, :] >= start, -np.log1p(-hazard), 0.0), axis=1)
    crossed = cum >= acc["churn_draw"].to_numpy()[:, None]
    return np.where(crossed.any(axis=1), crossed.argmax(axis=1) + 1, HORIZON)


def _bump(lift: np.ndarray, wave: int) -> np.ndarray:
    weeks = np.arange(HORIZON)
    decay = np.where(weeks >= wave, np.exp(-(weeks - wave) / 8.0), 0.0)
    return lift[:, None] * decay[None, :]


def _assign(rng: np.random.Generator, acc: pd.DataFrame, alive_at: np.ndarray, wave: int) -> pd.DataFrame:
    eligible = alive_at & (acc["start_week"].to_numpy() <= wave - 4)
    idx = np.flatnonzero(eligible)
    return pd.DataFrame({
        "account": acc["account"].to_numpy()[idx],
        "row": idx,
        "wave": wave,
        "action": np.asarray(ACTIONS)[rng.integers(0, len(ACTIONS), len(idx))],
    })


SEAT_STEP = 0.2  # share of its seats a team adds or removes in one move
PLAN_SHARE = 0.5  # chance that a move changes the plan rather than the seats


def plan_rates(health: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weekly chances of a move up and of a move down (plan or seats) at this health."""
    # Rates bounded like real accounts': even a thriving team grows to a few times its size, not without end.
    return 0.004 * np.exp(np.minimum(health, 1.5)), 0.003 * np.exp(np.minimum(-health, 1.5))


def seat_ceiling(acc: pd.DataFrame) -> np.ndarray:
    return 3 * acc["seats0"].to_numpy() + 5


def _plans(rng: np.random.Generator, acc: pd.DataFrame, health: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plan and seat paths: healthy accounts upgrade and grow, unhealthy ones downgrade and shrink."""
    n = len(acc)
    plan = np.repeat(acc["plan0"].to_numpy()[:, None], HORIZON, axis=1)
    seats = np.repeat(acc["seats0"].to_numpy()[:, None].astype(float), HORIZON, axis=1)
    up_rate, down_rate = plan_rates(health)
    up = rng.random((n, HORIZON)) < up_rate
    down = rng.random((n, HORIZON)) < down_rate
    multi = (acc["segment"] != "consumer").to_numpy()
    ceiling = seat_ceiling(acc)
    for t in range(1, HORIZON):
        step = up[:, t].astype(int) - down[:, t].astype(int)
        plan_move = step * (rng.random(n) < PLAN_SHARE)
        plan[:, t] = np.clip(plan[:, t - 1] + plan_move, 0, len(PLANS) - 1)
        seat_move = np.where(multi & (plan_move == 0), step, 0)
        seats[:, t] = np.clip(np.round(seats[:, t - 1] * (1 + SEAT_STEP * seat_move)), 1, ceiling)
    return plan, seats.astype(int)


def simulate(rng: np.random.Generator, acc: pd.DataFrame) -> World:
    mean = _health_mean(acc)
    base = mean + _health_noise(rng, len(acc))
    due, failed = _invoices(rng, acc)
    recent_failure = _recent(failed, 4)
    plan, seats = _plans(rng, acc, base)
    mrr = np.asarray([PRICE[p] for p in PLANS])[plan] * seats
    lift = action_lift(acc)
    health = base.copy()
    arms, bumps = [], {}
    for wave in (*WAVES, OBSERVED):
        churn = _churn_week(weekly_hazard(health, recent_failure, acc), acc)
        alive_at = (acc["start_week"].to_numpy() <= wave) & (churn > wave)
        arms.append(_assign(rng, acc, alive_at, wave))
        if wave == OBSERVED:  # the ground truth's "what if we acted today": effects only, nothing exported
            break
        rows, a = arms[-1]["row"].to_numpy(), arms[-1]["action"].map(ACTIONS.index).to_numpy()
        bumps[wave] = np.zeros_like(health)
        bumps[wave][rows] = _bump(lift[rows, a], wave)
        health += bumps[wave]
    hazard = weekly_hazard(health, recent_failure, acc)
    churn_week = _churn_week(hazard, acc)
    weeks = np.arange(HORIZON)[None, :]
    alive = (weeks >= acc["start_week"].to_numpy()[:, None]) & (weeks < churn_week[:, None])
    assignments = pd.concat([arm.drop(columns="row") for arm in arms[:-1]], ignore_index=True)
    w = World(acc, health, hazard, alive, churn_week, seats, plan, mrr, due, failed, assignments,
              pd.DataFrame(), mean, bumps, pd.DataFrame())
    w.effects = pd.concat([action_effects(w, arm, lift) for arm in arms if len(arm)], ignore_index=True)
    w.responses = _responses(rng, w, pd.concat(arms[:-1], ignore_index=True))
    return w


def act(rng: np.random.Generator, w: World, arm: pd.DataFrame, week: int) -> World:
    """The world after the actions of `arm` (account, row, action) taken at `week`, as an experiment wave takes
    them: each bumps its account's health from `week` on; hazard and churn week follow from the same churn draw, so
    an account without action churns exactly as before, and a treated one's counterfactual is the world before.
    The expansion orders the actions bring are drawn from `rng`."""
    rows, a = arm["row"].to_numpy(dtype=int), arm["action"].map(ACTIONS.index).to_numpy(dtype=int)
    bump = np.zeros_like(w.health)
    bump[rows] = _bump(action_lift(w.accounts)[rows, a], week)
    health = w.health + bump
    hazard = weekly_hazard(health, _recent(w.failed, 4), w.accounts)
    churn_week = _churn_week(hazard, w.accounts)
    weeks = np.arange(HORIZON)[None, :]
    alive = (weeks >= w.accounts["start_week"].to_numpy()[:, None]) & (weeks < churn_week[:, None])
    assigned = arm.assign(wave=week)
    after = replace(w, health=health, hazard=hazard, alive=alive, churn_week=churn_week,
                    assignments=assigned.drop(columns="row"), bumps={**w.bumps, week: bump})
    after.responses = _responses(rng, after, assigned)
    return after


def _responses(rng: np.random.Generator, world: World, assigned: pd.DataFrame) -> pd.DataFrame:
    """The expansion orders of the assigned accounts that responded and were still subscribed to place them."""
    rows, wave = assigned["row"].to_numpy(dtype=int), assigned["wave"].to_numpy(dtype=int)
    chance = response_chance(world.accounts)[rows, assigned["action"].map(ACTIONS.index).to_numpy(dtype=int)]
    week = wave + 1 + rng.integers(0, RESPONSE_WEEKS, len(rows))
    placed = (rng.random(len(rows)) < chance) & world.alive[rows, week]
    return pd.DataFrame({"row": rows[placed], "wave": wave[placed], "week": week[placed],
                         "amount": world.mrr[rows[placed], wave[placed]]})


def action_effects(world: World, arm: pd.DataFrame, lift: np.ndarray) -> pd.DataFrame:
    """True outcome of every action for every assigned account, churn risk and revenue (subscription invoices and
    add-on orders) over EFFECT_WEEKS, as expected from the state at the wave (what a decision then could know at
    best, as in `churn_risk_90d`), not from how the health noise and payment failures turned out afterwards."""
    rows, wave = arm["row"].to_numpy(), int(arm["wave"].iloc[0])
    health, recent = _expected_state(world, wave, before_wave=True)
    ahead = np.arange(health.shape[1])
    sub = world.accounts.iloc[rows]
    price = world.mrr[rows, wave]
    due = world.invoice_due[rows][:, wave + ahead]
    addons = addon_mean(world.seats[rows, wave])[:, None]
    responds = response_chance(sub)
    out = []
    for i, action in enumerate(ACTIONS):
        h = health[rows] + _bump(lift[rows, i], wave)[:, wave + ahead]
        survival = np.cumprod(1 - weekly_hazard(h, recent[rows], sub), axis=1)
        # the discount waives the invoices from the week after the action on, as the billing silo shows them
        # (`silos.Builder.discount_share`): not one due in the action's own week
        waived = DISCOUNT * (ahead >= 1) if action == "discount" else np.zeros(len(ahead))
        revenue = survival * (due * price[:, None] * (1 - waived) + addon_rate(h) * addons)
        # the order comes in week 1 to RESPONSE_WEEKS, equally likely, from an account alive then
        response = responds[:, i] * price * survival[:, :RESPONSE_WEEKS].mean(axis=1)
        out.append(pd.DataFrame({
            "account": sub["account"].to_numpy(), "wave": wave, "action": action,
            "p_churn_90d": 1 - survival[:, -1], "revenue_90d": revenue.sum(axis=1) + response,
            "cost": ACTION_COST[action],
        }))
    return pd.concat(out, ignore_index=True)


def churn_risk_90d(world: World, weeks: np.ndarray) -> pd.DataFrame:
    """True probability of churning within EFFECT_WEEKS after each given week, for accounts alive then.

    `p_churn_90d` is what the full state at that week implies: today's health and its known drift, the noise
    decaying at its known rate, experiment effects already given, payment failures at their known rate — the
    best any model could do. `p_churn_90d_path` also knows how the noise and the failures will turn out.
    """
    rows = []
    for w in weeks:
        window = slice(w, w + EFFECT_WEEKS)
        path = 1 - np.prod(1 - world.hazard[:, window], axis=1)
        expected = 1 - np.prod(1 - _expected_hazard(world, w), axis=1)
        alive = world.alive[:, w]
        rows.append(pd.DataFrame({"account": world.accounts["account"].to_numpy()[alive], "week": w,
                                  "p_churn_90d": expected[alive], "p_churn_90d_path": path[alive]}))
    return pd.concat(rows, ignore_index=True)


def _expected_hazard(world: World, week: int) -> np.ndarray:
    """Weekly hazard over EFFECT_WEEKS from `week` as expected from the state at `week`."""
    return weekly_hazard(*_expected_state(world, week), world.accounts)


def _expected_state(world: World, week: int, before_wave: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Health and the chance of a payment failure in the last 4 weeks, for each of the EFFECT_WEEKS from `week`,
    as expected from the state at `week`: the known drift, experiment effects already given, today's noise
    decaying at its known rate, failures at their known rate. `before_wave`: as if the experiment wave of
    `week` had not happened (the state its arms are chosen in)."""
    ahead = week + np.arange(min(EFFECT_WEEKS, HORIZON - week))
    given = _given(world, week)
    noise_now = world.health[:, week] - world.mean_health[:, week] - given[:, week]
    if before_wave and week in world.bumps:
        given = given - world.bumps[week]
    decay = NOISE_MEMORY ** (ahead - week)
    health = world.mean_health[:, ahead] + given[:, ahead] + noise_now[:, None] * decay[None, :]
    rate = world.accounts["fail_rate"].to_numpy()[:, None]
    chance = np.where(np.arange(HORIZON)[None, :] <= week, world.failed, world.invoice_due * rate)
    no_failure = np.log1p(-np.clip(chance, 0, 1 - 1e-12))
    c = np.cumsum(no_failure, axis=1)
    lagged = np.zeros_like(c)
    lagged[:, 4:] = c[:, :-4]
    recent = 1 - np.exp(c - lagged)  # P(a failure in the last 4 weeks), as _recent counts them
    return health, recent[:, ahead]


def _given(world: World, week: int) -> np.ndarray:
    """The health effects of the experiment waves up to `week` (their whole paths)."""
    return sum((b for wave, b in world.bumps.items() if wave <= week), np.zeros_like(world.health))


def expansion_90d(world: World, weeks: np.ndarray) -> pd.DataFrame:
    """True probability of expanding within EFFECT_WEEKS after each given week, for accounts alive then: a plan
    upgrade, a seat increase or an add-on order (the actions' expansion orders included), while still subscribed.

    As `churn_risk_90d`, from the state at that week: health as expected then (the plans follow it without the
    experiments' effects, the add-on orders with them), the plan and seats of that week, survival by the expected
    hazard; a wave still ahead in the window brings each eligible account one action drawn at random.
    """
    rows = []
    for w in weeks:
        alive = world.alive[:, w]
        p = _expansion_chance(world, w)
        rows.append(pd.DataFrame({"account": world.accounts["account"].to_numpy()[alive], "week": w,
                                  "p_expand_90d": p[alive]}))
    return pd.concat(rows, ignore_index=True)


def _expansion_chance(world: World, week: int) -> np.ndarray:
    acc = world.accounts
    health, recent = _expected_state(world, week)
    ahead = week + np.arange(health.shape[1])
    up, down = plan_rates(health - _given(world, week)[:, ahead])
    seats = world.seats[:, week]
    can_plan = world.plan[:, week] < len(PLANS) - 1
    can_seat = (acc["segment"] != "consumer").to_numpy() & (
        np.minimum(np.round(seats * (1 + SEAT_STEP)), seat_ceiling(acc)) > seats)
    grows = up * (1 - down) * (PLAN_SHARE * can_plan + (1 - PLAN_SHARE) * can_seat)[:, None]
    orders = 1 - np.exp(-addon_rate(health))
    responds = _response_weeks(world, week, ahead)
    expands = 1 - (1 - grows) * (1 - orders) * (1 - responds)  # chance of an expansion in each week
    alive = _before(weekly_hazard(health, recent, acc))
    return (alive * _before(expands) * expands).sum(axis=1)


def _before(chance: np.ndarray) -> np.ndarray:
    """Chance that none of the weekly events happened in the weeks before each week."""
    return np.cumprod(np.hstack([np.ones((len(chance), 1)), 1 - chance[:, :-1]]), axis=1)


def _response_weeks(world: World, week: int, ahead: np.ndarray) -> np.ndarray:
    """Chance of an action's expansion order in each week ahead, given none yet: known actions of waves up to
    `week`, and for a wave still ahead the mean over the actions it may draw, for accounts old enough by then."""
    chance = np.zeros((len(world.accounts), len(ahead)))
    responds = response_chance(world.accounts)
    given = world.assignments[world.assignments["wave"] <= week]
    rows = np.searchsorted(world.accounts["account"].to_numpy(), given["account"].to_numpy())
    by_arm = responds[rows, given["action"].map(ACTIONS.index).to_numpy(dtype=int)]
    for wave in sorted({*given["wave"].unique(), *(v for v in WAVES if week < v < ahead[-1])}):
        hit = (ahead > wave) & (ahead <= wave + RESPONSE_WEEKS)
        if not hit.any():
            continue
        # the order's week is equally likely among the RESPONSE_WEEKS: its chance in the j-th given none before
        j = ahead[hit] - wave - 1
        if wave <= week:
            at_wave = np.zeros(len(world.accounts))
            mine = given["wave"].to_numpy() == wave
            at_wave[rows[mine]] = by_arm[mine]
        else:
            at_wave = responds.mean(axis=1) * (world.accounts["start_week"].to_numpy() <= wave - 4)
        share = at_wave[:, None] / RESPONSE_WEEKS
        chance[:, hit] = 1 - (1 - chance[:, hit]) * (1 - share / (1 - share * j[None, :]))
    return chance
