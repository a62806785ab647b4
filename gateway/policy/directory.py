"""The in-memory customer directory: who a sender is, and on which plan.

Owns lookups by contact address, by domain and by E.164 phone, built once per config load so a
lookup is a dict access. Never touches storage; a live voice call may use it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.schema import Account, Contact, CustomersFile, PlansFile
from gateway.message import Customer
from gateway.phone import normalise_phone

UNKNOWN_ACCOUNT = "unknown"


@dataclass(frozen=True)
class Directory:
    by_email: dict[str, tuple[Account, Contact]]
    by_phone: dict[str, tuple[Account, Contact]]
    by_domain: dict[str, Account]
    plan_rank: dict[str, int]
    lowest_plan: str

    @classmethod
    def build(cls, customers: CustomersFile, plans: PlansFile) -> Directory:
        by_email: dict[str, tuple[Account, Contact]] = {}
        by_phone: dict[str, tuple[Account, Contact]] = {}
        by_domain: dict[str, Account] = {}
        for account in customers.account:
            for domain in account.domains:
                by_domain[domain.lower()] = account
            for contact in account.contacts:
                if contact.email:
                    by_email[contact.email.lower()] = (account, contact)
                if contact.phone:
                    by_phone[normalise_phone(contact.phone)] = (account, contact)
        names = [p.name for p in plans.plan] or ["none"]
        return cls(by_email, by_phone, by_domain, {n: i for i, n in enumerate(names)}, names[0])

    def identify(self, sender: str, channel: str) -> Customer:
        """Who sent this: a known contact, anyone at a customer's domain, or the unknown account."""
        sender = sender.strip().lower()
        if channel.startswith("twilio") or sender.startswith("+"):
            hit = self.by_phone.get(normalise_phone(sender)) if sender else None
            if hit:
                return self._customer(hit[0], hit[1], "phone")
        else:
            hit = self.by_email.get(sender)
            if hit:
                return self._customer(hit[0], hit[1], "contact")
            domain = sender.rsplit("@", 1)[-1] if "@" in sender else ""
            account = self.by_domain.get(domain)
            if account is not None:
                return self._customer(account, None, "domain")
        return Customer(
            account_id=UNKNOWN_ACCOUNT,
            account_name="",
            plan=self.lowest_plan,
            plan_rank=0,
            known=False,
            contact_name=None,
            contact_email=sender if "@" in sender else None,
            emergency_authorised=False,
            language="en",
            matched_by="unknown",
        )

    def _customer(self, account: Account, contact: Contact | None, how: str) -> Customer:
        return Customer(
            account_id=account.id,
            account_name=account.name,
            plan=account.plan,
            plan_rank=self.plan_rank.get(account.plan, 0),
            known=True,
            contact_name=contact.name if contact else None,
            contact_email=(contact.email.lower() or None) if contact else None,
            emergency_authorised=bool(contact and contact.emergency_authorised),
            language=account.language,
            matched_by=how,
        )
