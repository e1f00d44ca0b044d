"""Assignment by load, capacity, team and round-robin: `engine.plan.pick_assignee` over a `StaticState`
(what the simulator's `--state FILE` gives and what the store's snapshot is turned into)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.config import DecisionType, Intent, OrgConfig, User
from engine.loader import OrgBundle
from engine.plan import make_plan, pick_assignee
from engine.ports import StaticState
from engine.text import extract

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def with_users(org: OrgConfig, *users: User) -> OrgConfig:
    """acme with extra users (the shipped file stays untouched)."""
    return org.model_copy(update={"users": [*org.users, *users]})


def designers(*specs: tuple[str, int]) -> list[User]:
    """Users of role DESIGNER (no acme user holds it), as (id, capacity)."""
    return [User(id=uid, name=uid.title(), email=f"{uid}@acme.example", role="DESIGNER", capacity=cap)
            for uid, cap in specs]


def pick(org: OrgConfig, role: str, state: StaticState, prefer: list[str] | None = None) -> str | None:
    user, _ = pick_assignee(org, role, state, prefer or [])
    return user.id if user else None


# --------------------------------------------------------------------------- round-robin among equals

def test_equal_load_goes_to_the_never_assigned_first(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org  # SALES: u-sam and u-lee, capacity 12 each
    state = StaticState(loads={"u-sam": 2, "u-lee": 2}, last_assigned={"u-lee": T0})
    assert pick(org, "SALES", state) == "u-sam"  # never assigned beats "u-lee" (which wins by id otherwise)


def test_equal_load_goes_to_whoever_was_assigned_longest_ago(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org
    state = StaticState(loads={"u-sam": 3, "u-lee": 3},
                        last_assigned={"u-lee": T0, "u-sam": T0 - timedelta(minutes=5)})
    assert pick(org, "SALES", state) == "u-sam"
    state.last_assigned["u-sam"] = T0 + timedelta(seconds=1)
    assert pick(org, "SALES", state) == "u-lee"


def test_round_robin_cycles_through_equally_loaded_users(acme_bundle: OrgBundle) -> None:
    # Three designers whose intakes are closed as fast as they come (the load stays 0): each assignment
    # moves the assignee to the back of the queue, so they take turns.
    org = with_users(acme_bundle.org, *designers(("u-dee", 5), ("u-bea", 5), ("u-cal", 5)))
    state = StaticState()
    order = []
    for i in range(7):
        chosen = pick(org, "DESIGNER", state)
        assert chosen is not None
        order.append(chosen)
        state.last_assigned[chosen] = T0 + timedelta(minutes=i)
    assert order == ["u-bea", "u-cal", "u-dee", "u-bea", "u-cal", "u-dee", "u-bea"]


def test_the_same_instant_falls_back_to_the_id(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org
    state = StaticState(last_assigned={"u-sam": T0, "u-lee": T0})
    assert pick(org, "SALES", state) == "u-lee"


def test_load_relative_to_capacity_comes_before_round_robin(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org  # ADMINs: u-omar (capacity 20), u-ana (capacity 15)
    # u-omar got one a minute ago and u-ana never did, but 4/20 = 0.2 is lighter than 4/15 = 0.27.
    state = StaticState(loads={"u-omar": 4, "u-ana": 4}, last_assigned={"u-omar": T0})
    user, why = pick_assignee(org, "ADMIN", state, [])
    assert user is not None and user.id == "u-omar"
    assert why == "u-omar has the lightest ADMIN load (4/20)"
    # the same relative load (4/20 = 3/15): round-robin decides
    state = StaticState(loads={"u-omar": 4, "u-ana": 3}, last_assigned={"u-omar": T0, "u-ana": T0 + timedelta(hours=1)})
    assert pick(org, "ADMIN", state) == "u-omar"


def test_a_load_source_without_last_assigned_still_picks_deterministically(acme_bundle: OrgBundle) -> None:
    class LoadsOnly:
        """A LoadSource that knows nothing of when users were last assigned."""

        def load(self, user_id: str) -> int:
            return {"u-sam": 1, "u-lee": 1}.get(user_id, 0)

    user, _ = pick_assignee(acme_bundle.org, "SALES", LoadsOnly(), [])
    assert user is not None and user.id == "u-lee"


# --------------------------------------------------------------------------- capacity

def test_a_user_at_capacity_is_skipped_even_when_next_in_turn(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org
    state = StaticState(loads={"u-sam": 12, "u-lee": 11}, last_assigned={"u-lee": T0})
    user, why = pick_assignee(org, "SALES", state, [])
    assert user is not None and user.id == "u-lee"
    assert why == "u-lee has the lightest SALES load (11/12)"


def test_capacity_zero_is_never_assigned(acme_bundle: OrgBundle) -> None:
    org = with_users(acme_bundle.org, *designers(("u-off", 0), ("u-on", 3)))
    assert pick(org, "DESIGNER", StaticState(loads={"u-on": 2})) == "u-on"
    user, why = pick_assignee(org, "DESIGNER", StaticState(loads={"u-on": 3}), [])
    assert user is None
    assert why == "every DESIGNER is at capacity (u-off 0/0, u-on 3/3)"


def test_everyone_full_gives_none_with_the_reason(acme_bundle: OrgBundle) -> None:
    org = acme_bundle.org  # OPERATORs: u-kim and u-raj, capacity 10 each
    state = StaticState(loads={"u-kim": 10, "u-raj": 15}, last_assigned={"u-kim": T0})
    assert pick_assignee(org, "OPERATOR", state, ["u-kim", "u-raj"]) == (
        None, "every OPERATOR is at capacity (u-kim 10/10, u-raj 15/10)")


# --------------------------------------------------------------------------- team preference

def test_the_pipeline_team_is_preferred_over_round_robin(acme_bundle: OrgBundle) -> None:
    outsider = User(id="u-abe", name="Abe Outside", email="abe@acme.example", role="SALES", capacity=12)
    org = with_users(acme_bundle.org, outsider)
    # u-abe was never assigned and u-sam/u-lee were, but at equal load the team comes first ...
    state = StaticState(last_assigned={"u-sam": T0, "u-lee": T0 - timedelta(hours=1)})
    assert pick(org, "SALES", state, ["u-sam", "u-lee"]) == "u-lee"
    # ... then round-robin inside the team
    state.last_assigned["u-lee"] = T0 + timedelta(hours=1)
    assert pick(org, "SALES", state, ["u-sam", "u-lee"]) == "u-sam"
    # without a team, round-robin alone: the never-assigned outsider
    assert pick(org, "SALES", state, []) == "u-abe"


def test_a_lighter_outsider_beats_the_team(acme_bundle: OrgBundle) -> None:
    outsider = User(id="u-abe", name="Abe Outside", email="abe@acme.example", role="SALES", capacity=12)
    org = with_users(acme_bundle.org, outsider)
    state = StaticState(loads={"u-sam": 2, "u-lee": 2, "u-abe": 1})
    assert pick(org, "SALES", state, ["u-sam", "u-lee"]) == "u-abe"


def test_a_full_team_falls_back_to_an_outsider(acme_bundle: OrgBundle) -> None:
    outsider = User(id="u-abe", name="Abe Outside", email="abe@acme.example", role="SALES", capacity=1)
    org = with_users(acme_bundle.org, outsider)
    state = StaticState(loads={"u-sam": 12, "u-lee": 12})
    assert pick(org, "SALES", state, ["u-sam", "u-lee"]) == "u-abe"


# --------------------------------------------------------------------------- through the plan and the state file

def test_the_plan_assigns_round_robin_from_the_state(acme_bundle: OrgBundle) -> None:
    data = {"from": "Jo <jo@shop.example>", "subject": "Pricing", "text": "How much is the pro plan?"}
    event = {"org": "acme", "type": "email:received", "source": "EMAIL", "data": data}

    def assignee(state: StaticState) -> str | None:
        p = make_plan(acme_bundle, Intent.SALES_INQUIRY, None, 3, event, extract(data), state, state, T0)
        [a] = [a for a in p.actions if a.type == DecisionType.ASSIGN_PIPELINE]
        return a.params["assignee"]

    assert assignee(StaticState()) == "u-lee"
    assert assignee(StaticState(last_assigned={"u-lee": T0})) == "u-sam"
    assert assignee(StaticState(loads={"u-sam": 1}, last_assigned={"u-lee": T0})) == "u-lee"


def test_state_file_last_assigned_feeds_round_robin(acme_bundle: OrgBundle) -> None:
    state = StaticState.from_json({"loads": {"u-sam": 1, "u-lee": 1},
                                   "last_assigned": {"u-lee": "2026-12-01T09:00:00+00:00",
                                                     "u-sam": "2026-12-01T10:00:00+00:00"}})
    assert state.last("u-lee") == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert state.last("u-nobody") is None
    assert pick(acme_bundle.org, "SALES", state) == "u-lee"

